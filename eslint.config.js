// ESLint's checks of the page's scripts (`make lint-js`): its recommended
// rules, for ES modules run in a browser beside the vendored uPlot.

import js from "@eslint/js";
import globals from "globals";

export default [
  { ignores: ["static/vendor/"] },
  js.configs.recommended,
  {
    files: ["static/**/*.js"],
    languageOptions: {
      sourceType: "module",
      globals: { ...globals.browser, uPlot: "readonly" },
    },
  },
];
