// Copy buttons: <button type="button" data-copy="ELEMENT-ID">Copy</button> copies that element's text.
// navigator.clipboard exists only in a secure context (https, or localhost); a server reached over plain
// http gets the fallback: the text is selected and document.execCommand("copy") copies the selection
// (browsers still honour it inside a click), and where even that is refused the selection stays for
// Ctrl+C. The button's status line says which of these happened.
(function () {
  "use strict";

  function selectText(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function report(button, message) {
    var status = button.parentNode.querySelector(".rf-copy-status");
    if (!status) {
      status = document.createElement("span");
      status.className = "rf-copy-status";
      status.setAttribute("role", "status");
      button.insertAdjacentElement("afterend", status);
    }
    status.textContent = message;
  }

  function copyBySelection(button, source) {
    selectText(source);
    var copied = false;
    try {
      copied = document.execCommand("copy");
    } catch (refused) {
      copied = false;
    }
    report(button, copied ? "Copied" : "Selected: press Ctrl+C to copy");
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) {
      return;
    }
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) {
      return;
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(source.textContent).then(
        function () { report(button, "Copied"); },
        function () { copyBySelection(button, source); }
      );
    } else {
      copyBySelection(button, source);
    }
  });
})();
