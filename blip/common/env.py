"""
The environment variables that stand in for command-line options.
"""


def env_name(option: str) -> str:
    """
    :return: the environment variable that sets ``option``.
    """
    return "BLIP_" + option.upper().replace("-", "_")
