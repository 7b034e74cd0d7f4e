// ipywidgets 8's static widget manager typesets labels with the MathJax 2 call
// `MathJax.Hub.Queue(["Typeset", MathJax.Hub, element])`, but the book loads MathJax 3, which has
// no `Hub`. This forwards that one call to MathJax 3's `typesetPromise`, so widget labels with
// LaTeX render and the page logs no errors. It runs after MathJax (both are deferred, in order).
(function () {
  if (window.MathJax && !window.MathJax.Hub) {
    window.MathJax.Hub = {
      Queue: function (command) {
        var element = Array.isArray(command) ? command[2] : undefined;
        if (element && window.MathJax.typesetPromise) {
          window.MathJax.typesetPromise([element]).catch(function () {});
        }
      },
    };
  }
})();
