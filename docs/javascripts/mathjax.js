// Equations (pymdownx.arithmatex, generic mode) are typeset by MathJax, loaded only on a page that has
// one; a page without equations loads nothing from elsewhere, and offline the TeX source stays readable.
window.MathJax = {
  tex: { inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true, processEnvironments: true },
  options: { ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex" },
};
if (document.querySelector(".arithmatex")) {
  const script = document.createElement("script");
  script.src = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js";
  script.async = true;
  document.head.appendChild(script);
}
