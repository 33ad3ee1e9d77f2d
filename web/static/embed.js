/*
 * webfl embed widget: lets visitors of another site lend their browser to train.
 *
 *   <script src="https://WEBFL-HOST/embed.js" data-task="mnist"></script>
 *
 * Options, as attributes of that script tag:
 *   data-task    the task to train (default "mnist"; must be the server's task)
 *   data-target  CSS selector of the element to render into (default: right after the tag)
 *   data-height  height of the card before the widget reports its own (default 330)
 *
 * The card is an iframe of WEBFL-HOST/embed, so the worker, the socket and the model
 * live on webfl's origin, out of the host page's reach. webfl only lets allowed sites
 * frame it (Content-Security-Policy: frame-ancestors); a browser blocks a disallowed
 * frame silently, so this script asks the server first (/api/embed/check, a CORS
 * request whose Origin header the page cannot forge) and shows a refusal instead of
 * an empty box. The widget then reports its content's height (a postMessage that
 * is only believed from that very iframe and webfl's origin), and the frame follows,
 * so Pause and Leave stay in view on a phone. A classic script, not a module: it
 * needs document.currentScript.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || !script.src) return;
  var server = new URL(script.src, window.location.href).origin;
  var task = script.getAttribute("data-task") || "mnist";
  var height = parseInt(script.getAttribute("data-height"), 10) || 330;
  var selector = script.getAttribute("data-target");
  var target = selector ? document.querySelector(selector) : null;

  var host = document.createElement("div");
  host.setAttribute("data-webfl-embed", task);
  if (target) target.appendChild(host);
  else script.parentNode.insertBefore(host, script.nextSibling);
  // An open shadow root keeps the host page's CSS off the card (and ours off the page).
  var root = host.attachShadow({ mode: "open" });

  function card() {
    var box = document.createElement("div");
    var s = box.style;
    s.boxSizing = "border-box";
    s.maxWidth = "420px";
    s.width = "100%";
    s.font = "14px/1.4 system-ui, sans-serif";
    s.color = "#1f2937";
    s.border = "1px solid #d1d5db";
    s.borderRadius = "10px";
    s.background = "#fff";
    s.overflow = "hidden";
    root.replaceChildren(box);
    return box;
  }

  function message(text, testid) {
    var box = card();
    box.style.padding = "12px 14px";
    box.setAttribute("role", "note");
    box.setAttribute("data-testid", testid);
    box.textContent = text;
  }

  function frame(answer) {
    var iframe = document.createElement("iframe");
    iframe.src = server + "/embed?task=" + encodeURIComponent(task);
    iframe.title = "webfl: lend your browser to train " + (answer.title || task);
    iframe.setAttribute("data-testid", "embed-frame");
    iframe.referrerPolicy = "origin";
    var s = iframe.style;
    s.display = "block";
    s.width = "100%";
    s.height = height + "px";
    s.border = "0";
    card().appendChild(iframe);
    window.addEventListener("message", function (event) {
      var data = event.data;
      if (event.origin !== server || event.source !== iframe.contentWindow) return;
      if (!data || data.type !== "webfl:height" || typeof data.height !== "number" || !isFinite(data.height)) return;
      s.height = Math.round(Math.min(Math.max(data.height, 80), 4000)) + "px";
    });
  }

  message("Loading the webfl widget…", "embed-loading");
  fetch(server + "/api/embed/check?task=" + encodeURIComponent(task), { mode: "cors", credentials: "omit", cache: "no-store" })
    .then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.json();
    })
    .then(function (answer) {
      if (answer.task !== task) {
        message("The webfl server at " + server + " does not train “" + task + "”.", "embed-refused");
      } else if (!answer.allowed) {
        message(
          "This site (" + (answer.origin || window.location.origin) + ") is not allowed to embed the webfl widget of " + server +
            ". The site's owner can ask webfl's operator to add it to the allowed embedding origins.",
          "embed-refused",
        );
      } else {
        frame(answer);
      }
    })
    .catch(function () {
      message("The webfl widget could not reach " + server + ". Try again later.", "embed-unreachable");
    });
})();
