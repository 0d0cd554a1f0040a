/* Borscht widget for recipe sites: inserts the /embed page as an iframe and relays
 * its results to the host page.
 *
 *   <div data-borscht-widget></div>
 *   <script src="https://YOUR-BORSCHT-SERVER/widget.js" async></script>
 *   <script>
 *     document.addEventListener("borscht:result", (e) => console.log(e.detail));
 *   </script>
 *
 * Events (on the container element, bubbling to document):
 *   borscht:result  detail = {best, alternatives, confidence, atwater, candidates, ...}
 *   borscht:saved   detail = {date, dish, grams, protein_g, fat_g, carbs_g, kcal}
 * Numbers are rounded to one decimal. The frame grows and shrinks with the widget's
 * content (it tells its height); data-height is only the height before it does.
 * Attributes on the container: data-lang="ru|en", data-height="640".
 * Which sites may embed the widget is the server's --embed-ancestors setting.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  var origin = new URL(script ? script.src : location.href).origin;
  var frames = [];

  function mount(container) {
    if (container.dataset.borschtMounted) return;
    container.dataset.borschtMounted = "1";
    var frame = document.createElement("iframe");
    var lang = container.dataset.lang === "en" ? "en" : "ru";
    frame.src = origin + "/embed?lang=" + lang;
    frame.title = lang === "en" ? "Borscht: recognise a dish" : "Borscht: распознать блюдо";
    frame.allow = "camera";
    frame.loading = "lazy";
    frame.style.cssText = "width:100%;max-width:28rem;border:0;border-radius:12px;height:" +
      (parseInt(container.dataset.height, 10) || 640) + "px";
    container.appendChild(frame);
    frames.push({ frame: frame, container: container });
  }

  window.addEventListener("message", function (event) {
    if (event.origin !== origin || !event.data || typeof event.data.type !== "string") return;
    if (event.data.type.indexOf("borscht:") !== 0) return;
    var source = null;
    frames.forEach(function (f) { if (f.frame.contentWindow === event.source) source = f; });
    if (event.data.type === "borscht:height") {
      var height = event.data.data && Number(event.data.data.height);
      if (source && height > 0) source.frame.style.height = Math.ceil(height) + "px";
      return;
    }
    var target = source ? source.container : document;
    target.dispatchEvent(new CustomEvent(event.data.type, { detail: event.data.data, bubbles: true }));
  });

  function mountAll() {
    document.querySelectorAll("[data-borscht-widget]").forEach(mount);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", mountAll);
  else mountAll();
  window.BorschtWidget = { mount: mount };
})();
