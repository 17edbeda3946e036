"""
Publishing to an MQTT broker, with Home Assistant's discovery.
"""
