/* Weir tracker: cookieless pageviews and events. Served by the Weir collector as /script.js.
   <script defer src="https://COLLECTOR/script.js" data-domain="example.com"></script>
   Attributes: data-domain (site, default: page host), data-api (endpoint, default: COLLECTOR/collect),
   data-hash (count #fragment routes), data-respect-dnt (honour Do Not Track),
   data-file-types (comma-separated download extensions).
   Opt out in a browser: localStorage.weir_ignore = "true".
   Custom events: weir("event", "Signup", {plan: "pro"}); weir("pageview") sends one by hand. */
(function (w, d) {
  "use strict";
  var script = d.currentScript;
  if (!script) return;
  var loc = w.location, nav = w.navigator;
  function attr(name) { return script.getAttribute("data-" + name); }
  function flag(name) { var v = attr(name); return v !== null && v !== "false"; }

  var endpoint = attr("api") || new URL(script.src).origin + "/collect";
  var site = attr("domain") || loc.hostname;
  var hashMode = flag("hash");
  var respectDnt = flag("respect-dnt");
  var fileTypes = new RegExp("\\.(" + (attr("file-types") ||
    "pdf,xlsx?,docx?,txt,rtf,csv,exe,key,pps,pptx?,7z,pkg,rar,gz,zip,avi,mov,mp4,mpe?g,wmv,midi?,mp3,wav,wma,dmg")
    .split(",").join("|") + ")$", "i");

  function ignored() {
    try {
      if (w.localStorage.getItem("weir_ignore") === "true") return true;
    } catch (e) { /* storage blocked: not opted out */ }
    return respectDnt && (nav.doNotTrack === "1" || w.doNotTrack === "1" || nav.msDoNotTrack === "1");
  }

  function send(type, name, props) {
    if (ignored()) return;
    var body = JSON.stringify({
      site: site, type: type, name: name, url: loc.href,
      referrer: d.referrer || null, props: props || {}, hash_mode: hashMode ? 1 : 0
    });
    // A string body is sent as text/plain, so neither transport needs a CORS preflight.
    if (nav.sendBeacon && nav.sendBeacon(endpoint, body)) return;
    if (w.fetch) w.fetch(endpoint, { method: "POST", body: body, keepalive: true, credentials: "omit" })["catch"](function () {});
  }

  var lastPath;
  function page() {
    var path = loc.pathname + (hashMode ? loc.hash : "");
    if (path === lastPath) return;
    lastPath = path;
    send("pageview");
  }

  function onClick(event) {
    if (event.type === "auxclick" && event.button !== 1) return;
    var link = event.target && event.target.closest && event.target.closest("a[href]");
    if (!link || !/^https?:$/.test(link.protocol)) return;
    var href = link.href.slice(0, 255);
    if (link.hasAttribute("download") || fileTypes.test(link.pathname)) send("download", href, { url: link.href });
    else if (link.host !== loc.host) send("outbound", href, { url: link.href });
  }

  function weir(kind, name, props) {
    if (kind === "pageview") { lastPath = null; page(); }
    else if (kind === "event" && name) send("event", String(name), props);
  }

  var queued = (w.weir && w.weir.q) || [];
  w.weir = weir;
  for (var i = 0; i < queued.length; i++) weir.apply(null, queued[i]);

  d.addEventListener("click", onClick, true);
  d.addEventListener("auxclick", onClick, true);
  var history = w.history;
  if (history.pushState) {
    var pushState = history.pushState;
    history.pushState = function () { pushState.apply(this, arguments); page(); };
    w.addEventListener("popstate", page);
  }
  if (hashMode) w.addEventListener("hashchange", page);
  if (d.visibilityState === "prerender") {
    d.addEventListener("visibilitychange", function () { if (!lastPath && d.visibilityState === "visible") page(); });
  } else {
    page();
  }
})(window, document);
