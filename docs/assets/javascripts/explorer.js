// The citation-graph explorer (vendored Cytoscape.js). The page inlines the graph as a JSON literal
// (window.moekbGraphData), so nothing is fetched and the page also works from file://.
// The graph page loads this file itself (no other page needs Cytoscape), from its content, before the
// theme's own scripts: so it starts on DOMContentLoaded, which every engine's pages fire.
// Every label is set with textContent: titles and names are contributor text, never HTML.
//
// What it adds to the bare graph: filters; labels (method name, else id) once zoomed in; a side
// panel for the selected paper (a tap on a touch screen selects, a mouse click opens the paper); a
// layout switch (by taxonomy, as the page gives it, or along a time axis); hollow dashed nodes for
// papers whose reference list was not read; and the filters, layout and selection in the query
// string (?perspective=engine&year_from=2023&layout=year&paper=<id>), restored on reload.
(function () {
  "use strict";

  var current = null; // the live Cytoscape instance, if the current page has an explorer

  var LABEL_PX = 11; // labels keep their size on screen whatever the zoom, so zooming in spreads them
  var LABEL_MAX_PX = 130;
  var LABEL_ROOM_PX = 34; // labels wait until neighbouring papers are this far apart on screen
  var FIT_PADDING = 24;
  var YEAR_CELL = 40; // layout units between papers of the same year
  var AUTHORS_SHOWN = 3;
  var TOUCH_MOUSE_GRACE_MS = 800; // mouse events a browser emulates after a touch are not a mouse
  var STATE_KEYS = ["perspective", "subcategory", "modality", "gap", "year_from", "year_to", "q", "layout", "paper"];

  function element(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function labelled(labelText, control) {
    var label = element("label", { "class": "moekb-explorer__field" });
    label.appendChild(element("span", {}, labelText));
    label.appendChild(control);
    return label;
  }

  function select(name, anyLabel, groups) {
    // groups: [{label|null, options: [{value, text}]}]
    var control = element("select", { name: name });
    control.appendChild(element("option", { value: "" }, anyLabel));
    groups.forEach(function (group) {
      var parent = control;
      if (group.label) {
        parent = element("optgroup", { label: group.label });
        control.appendChild(parent);
      }
      group.options.forEach(function (o) { parent.appendChild(element("option", { value: o.value }, o.text)); });
    });
    return control;
  }

  function media(query) {
    return window.matchMedia ? window.matchMedia(query) : null;
  }

  // A device whose main pointer cannot hover (a phone, a tablet) gets tap wording and behaviour.
  function touchFirst() {
    var noHover = media("(hover: none)"), coarse = media("(pointer: coarse)");
    return Boolean((noHover && noHover.matches) || (coarse && coarse.matches));
  }

  // Paper page URLs come from the page's own list of links, which mkdocs resolved, so the explorer
  // follows whatever URL style the site is built with.
  function paperLinks() {
    var links = {};
    document.querySelectorAll("a[data-moekb-paper]").forEach(function (a) {
      links[a.getAttribute("data-moekb-paper")] = a.href;
    });
    return links;
  }

  function buildControls(container, data, years) {
    var controls = element("form", { "class": "moekb-explorer__controls", "aria-label": "Filter the graph" });
    controls.addEventListener("submit", function (event) { event.preventDefault(); });

    var legend = element("fieldset", { "class": "moekb-explorer__perspectives" });
    legend.appendChild(element("legend", {}, "Perspectives"));
    data.perspectives.forEach(function (p) {
      var box = element("input", { type: "checkbox", name: "perspective", value: p.id });
      box.defaultChecked = true; // the default, not just the state, so that Reset checks it again
      var label = element("label", { "class": "moekb-explorer__perspective", title: p.name });
      var swatch = element("span", { "class": "moekb-explorer__swatch", "aria-hidden": "true" });
      swatch.style.background = p.colour;
      label.appendChild(box);
      label.appendChild(swatch);
      label.appendChild(document.createTextNode(p.id));
      legend.appendChild(label);
    });
    controls.appendChild(legend);

    var subGroups = data.perspectives.map(function (p) {
      return {
        label: p.name,
        options: data.subcategories.filter(function (s) { return s.perspective === p.id; })
          .map(function (s) { return { value: s.id, text: s.name }; })
      };
    });
    var row = element("div", { "class": "moekb-explorer__row" });
    row.appendChild(labelled("Sub-category", select("subcategory", "any", subGroups)));
    row.appendChild(labelled("Modality", select("modality", "any", [{ label: null, options:
      data.modalities.map(function (m) { return { value: m.id, text: m.name }; }) }])));
    row.appendChild(labelled("Gap", select("gap", "any", [{ label: null, options:
      data.gaps.map(function (g) { return { value: g.id, text: g.name }; }) }])));
    var from = element("input", { type: "number", name: "from", min: years[0], max: years[1], value: years[0] });
    var to = element("input", { type: "number", name: "to", min: years[0], max: years[1], value: years[1] });
    row.appendChild(labelled("From", from));
    row.appendChild(labelled("To", to));
    row.appendChild(labelled("Search", element("input", {
      type: "search", name: "search", placeholder: "title, author or id", "aria-label": "Search the graph"
    })));
    var reset = element("button", { type: "reset", "class": "md-button" }, "Reset");
    row.appendChild(reset);
    controls.appendChild(row);
    container.appendChild(controls);
    return controls;
  }

  // The layout switch, the legend of node styles, and the help line: outside the filter form, so
  // that Reset leaves the layout alone.
  function buildBar(container) {
    var bar = element("div", { "class": "moekb-explorer__bar" });
    var layouts = element("fieldset", { "class": "moekb-explorer__layouts" });
    layouts.appendChild(element("legend", {}, "Layout"));
    [["taxonomy", "by taxonomy"], ["year", "by year"]].forEach(function (choice, i) {
      var radio = element("input", { type: "radio", name: "layout", value: choice[0] });
      radio.checked = i === 0;
      var label = element("label", { "class": "moekb-explorer__layout" });
      label.appendChild(radio);
      label.appendChild(document.createTextNode(choice[1]));
      layouts.appendChild(label);
    });
    bar.appendChild(layouts);

    var key = element("ul", { "class": "moekb-explorer__legend", "aria-label": "Node styles" });
    [["checked", "reference list read"], ["unchecked", "reference list not read yet (citations incomplete)"]]
      .forEach(function (entry) {
        var item = element("li", { "class": "moekb-explorer__key" });
        item.appendChild(element("span", { "class": "moekb-explorer__node moekb-explorer__node--" + entry[0],
          "aria-hidden": "true" }));
        item.appendChild(element("span", {}, entry[1]));
        key.appendChild(item);
      });
    bar.appendChild(key);
    var help = element("p", { "class": "moekb-explorer__help" });
    bar.appendChild(help);
    container.appendChild(bar);
    return { bar: bar, layouts: layouts, help: help };
  }

  function helpText(touch) {
    return touch
      ? "Tap a paper for its details, and tap it again to open it; tap the background to clear. " +
        "Pinch to zoom (labels appear once zoomed in), drag to pan."
      : "Hover over a paper for its title, click it to open it. " +
        "Scroll to zoom (labels appear once zoomed in), drag to pan.";
  }

  function style(ink, paper) {
    return [
      { selector: "node", style: {
        "background-color": "data(colour)", "width": "data(size)", "height": "data(size)",
        "label": "", "font-size": LABEL_PX, "color": ink, "text-valign": "bottom", "text-margin-y": 3,
        "text-wrap": "ellipsis", "text-max-width": 140, "text-outline-color": paper, "text-outline-width": 2,
        "text-outline-opacity": 0.85, "border-width": 0, "border-style": "solid", "border-color": "data(colour)"
      } },
      // Not checked: the reference list was not read, so the node's outgoing citations are incomplete.
      { selector: "node[!checked]", style: {
        "background-opacity": 0.25, "border-width": 2.5, "border-style": "dashed"
      } },
      { selector: "node.labelled", style: { "label": "data(label)" } },
      { selector: "edge", style: {
        "width": 1.2, "line-color": ink, "target-arrow-color": ink, "target-arrow-shape": "triangle",
        "arrow-scale": 0.8, "curve-style": "straight", "opacity": 0.55
      } },
      { selector: ".hidden", style: { "display": "none" } },
      { selector: ".faded", style: { "opacity": 0.12 } },
      { selector: "node.match", style: { "border-width": 3, "border-color": "#e91e63" } },
      { selector: "node.hover", style: { "border-width": 2, "border-color": ink } },
      { selector: "edge.hover", style: { "opacity": 1, "width": 2.2 } },
      { selector: "node.chosen", style: {
        "border-width": 4, "border-color": "#e91e63", "label": "data(label)", "z-index": 10, "font-weight": "bold",
        "underlay-color": "#e91e63", "underlay-opacity": 0.3, "underlay-shape": "ellipse" // a halo, seen when zoomed out
      } },
      { selector: "edge.chosen", style: {
        "opacity": 1, "width": 2.4, "line-color": "#e91e63", "target-arrow-color": "#e91e63"
      } }
    ];
  }

  // x along a time axis (one band per year; a run of two or more empty years shrinks to one band
  // marked as a break), y spreading the papers of a year in columns, sorted by perspective,
  // sub-category, citations and id so that a sub-category stays together. The number of rows is the
  // one that lets the whole fill a canvas of the given size at the largest zoom.
  function yearLayout(data, width, height) {
    var order = {};
    data.perspectives.forEach(function (p, i) { order[p.id] = i * 1000; });
    data.subcategories.forEach(function (s, i) { order[s.id] = i; });
    var byYear = {};
    data.nodes.forEach(function (n) { (byYear[n.year] = byYear[n.year] || []).push(n); });
    var years = Object.keys(byYear).map(Number).sort(function (a, b) { return a - b; });
    var most = Math.max.apply(null, years.map(function (y) { return byYear[y].length; }));
    var bands = 0;
    years.forEach(function (y, i) { bands += i === 0 ? 1 : Math.min(y - years[i - 1], 2); });
    var rows = most, best = 0;
    for (var r = Math.min(most, 4); r <= most; r += 1) {
      var zoom = Math.min(width / (bands * (Math.ceil(most / r) + 1) * YEAR_CELL), height / (r * YEAR_CELL));
      if (zoom > best * 1.0001) { best = zoom; rows = r; }
    }
    var band = (Math.ceil(most / rows) + 1) * YEAR_CELL;
    var positions = {}, ticks = [], x = 0;
    years.forEach(function (year, i) {
      if (i > 0) {
        var gap = year - years[i - 1];
        if (gap === 2) ticks.push({ x: x + band, text: String(year - 1) });
        if (gap > 2) ticks.push({ x: x + band, text: "…", gap: true }); // a break in the axis
        x += Math.min(gap, 2) * band;
      }
      ticks.push({ x: x, text: String(year) });
      var papers = byYear[year].slice().sort(function (a, b) {
        return (order[a.perspective] + (order[a.subcategory] || 0)) - (order[b.perspective] + (order[b.subcategory] || 0)) ||
          b.cited_by - a.cited_by || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
      });
      var columns = Math.ceil(papers.length / rows), inColumn = Math.ceil(papers.length / columns);
      papers.forEach(function (n, k) {
        var column = Math.floor(k / inColumn), row = k % inColumn;
        var height = column === columns - 1 ? papers.length - column * inColumn : inColumn;
        positions[n.id] = { x: x + (column - (columns - 1) / 2) * YEAR_CELL, y: (row - (height - 1) / 2) * YEAR_CELL };
      });
    });
    return { positions: positions, ticks: ticks };
  }

  function layoutPadding(name) {
    return name === "year" ? FIT_PADDING + 16 : FIT_PADDING; // room for the year axis
  }

  function readState() {
    var params;
    try { params = new URLSearchParams(window.location.search); } catch (e) { return {}; }
    var state = {};
    STATE_KEYS.forEach(function (key) { if (params.has(key)) state[key] = params.get(key); });
    return state;
  }

  function writeState(state) {
    try {
      var params = new URLSearchParams(window.location.search);
      STATE_KEYS.forEach(function (key) { params.delete(key); });
      STATE_KEYS.forEach(function (key) { if (state[key] !== undefined) params.set(key, state[key]); });
      var query = params.toString().replace(/%2C/g, ",");
      var url = window.location.pathname + (query ? "?" + query : "") + window.location.hash;
      if (url !== window.location.pathname + window.location.search + window.location.hash) {
        window.history.replaceState(window.history.state, "", url);
      }
    } catch (e) {
      // file:// pages and sandboxed frames may refuse: the explorer works without it.
    }
  }

  function authorLine(authors) {
    if (!authors || !authors.length) return "";
    var shown = authors.slice(0, AUTHORS_SHOWN).join(", ");
    var more = authors.length - AUTHORS_SHOWN;
    return more > 0 ? shown + " and " + more + " more" : shown;
  }

  function init(container) {
    var data = window.moekbGraphData;
    var colours = {}, perspectiveNames = {}, subNames = {};
    data.perspectives.forEach(function (p) { colours[p.id] = p.colour; perspectiveNames[p.id] = p.name; });
    data.subcategories.forEach(function (s) { subNames[s.id] = s.name; });
    var byId = {};
    data.nodes.forEach(function (n) { byId[n.id] = n; });
    var yearsSeen = data.nodes.map(function (n) { return n.year; });
    var years = [Math.min.apply(null, yearsSeen), Math.max.apply(null, yearsSeen)];
    var controls = buildControls(container, data, years);
    var bar = buildBar(container);
    var stage = element("div", { "class": "moekb-explorer__stage" });
    var canvas = element("div", { "class": "moekb-explorer__canvas", role: "img",
      "aria-label": "Citation graph of " + data.nodes.length + " papers; the list below has the same papers" });
    var tip = element("div", { "class": "moekb-explorer__tip", role: "tooltip" });
    tip.hidden = true;
    var axis = element("div", { "class": "moekb-explorer__axis", "aria-hidden": "true" });
    axis.hidden = true;
    var panel = element("aside", { "class": "moekb-explorer__panel", "aria-label": "Selected paper" });
    panel.hidden = true;
    var status = element("p", { "class": "moekb-explorer__status", "aria-live": "polite" });
    canvas.appendChild(tip);
    stage.appendChild(canvas);
    stage.appendChild(axis);
    stage.appendChild(panel);
    container.appendChild(stage);
    container.appendChild(status);

    var links = paperLinks();
    var ink = "#8c8c8c"; // mid grey: readable on the light and the dark palette
    function paperColour() {
      return getComputedStyle(container).getPropertyValue("--md-default-bg-color").trim() || "#ffffff";
    }
    var taxonomy = {};
    data.nodes.forEach(function (n) { taxonomy[n.id] = { x: n.x, y: n.y }; });
    var byYear = yearLayout(data, Math.max(canvas.clientWidth, 200), Math.max(canvas.clientHeight, 200));
    var elements = data.nodes.map(function (n) {
      return { group: "nodes", position: { x: n.x, y: n.y }, data: {
        id: n.id, title: n.title, year: n.year, perspective: n.perspective, subcategory: n.subcategory,
        modalities: n.modalities, gaps: n.gaps, colour: colours[n.perspective], checked: Boolean(n.checked),
        size: 14 + 9 * Math.sqrt(n.cited_by), label: n.method || n.id,
        text: (n.title + " " + n.id + " " + n.authors.join(" ") + " " + (n.method || "")).toLowerCase()
      } };
    }).concat(data.edges.map(function (e) {
      var source = data.nodes[e[0]].id, target = data.nodes[e[1]].id; // edges are [citing, cited] node positions
      return { group: "edges", data: { id: source + "->" + target, source: source, target: target } };
    }));

    // The state the URL asked for, applied to the controls before the first draw.
    var wanted = readState();
    var layoutName = wanted.layout === "year" ? "year" : "taxonomy";
    if (layoutName === "year") {
      elements.forEach(function (el) { if (el.group === "nodes") el.position = byYear.positions[el.data.id]; });
    }
    bar.layouts.querySelectorAll("input[name=layout]").forEach(function (radio) {
      radio.checked = radio.value === layoutName;
    });
    if (wanted.perspective !== undefined) {
      var keep = wanted.perspective.split(",");
      controls.querySelectorAll("input[name=perspective]").forEach(function (box) {
        box.checked = keep.indexOf(box.value) !== -1;
      });
    }
    ["subcategory", "modality", "gap"].forEach(function (name) {
      var control = controls.elements[name];
      if (wanted[name] && Array.prototype.some.call(control.options, function (o) { return o.value === wanted[name]; })) {
        control.value = wanted[name];
      }
    });
    if (/^\d{4}$/.test(wanted.year_from || "")) controls.elements.from.value = wanted.year_from;
    if (/^\d{4}$/.test(wanted.year_to || "")) controls.elements.to.value = wanted.year_to;
    if (wanted.q) controls.elements.search.value = wanted.q;

    var cy = cytoscape({
      container: canvas, elements: elements, style: style(ink, paperColour()),
      layout: { name: "preset", fit: true, padding: layoutPadding(layoutName) },
      minZoom: 0.05, maxZoom: 4, boxSelectionEnabled: false, autoungrabify: true, autounselectify: true,
      // With thousands of citations, drop edges while panning or zooming so the view keeps up.
      hideEdgesOnViewport: data.edges.length > 3000, textureOnViewport: data.edges.length > 3000
    });
    cy.userPanningEnabled(true);

    // Labels: shown once zoomed in past a threshold (see fitted), at the same size on screen whatever
    // the zoom (sized once a frame).
    var labelZoom = 1, labelsShown = null, labelFrame = 0;
    function updateLabels() {
      var show = cy.zoom() >= labelZoom;
      if (show === labelsShown) return;
      labelsShown = show;
      cy.nodes().toggleClass("labelled", show);
      container.setAttribute("data-labels", show ? "shown" : "hidden");
    }
    function sizeLabels() {
      labelFrame = 0;
      var zoom = cy.zoom();
      cy.batch(function () {
        cy.nodes().style({ "font-size": LABEL_PX / zoom, "text-margin-y": 3 / zoom, "text-outline-width": 2 / zoom,
          "text-max-width": LABEL_MAX_PX / zoom, "underlay-padding": 8 / zoom });
      });
    }
    // The median distance from a paper to its nearest neighbour, from a sample (layout units).
    function spacing() {
      var nodes = cy.nodes(), step = Math.max(1, Math.floor(nodes.length / 150)), gaps = [];
      for (var i = 0; i < nodes.length; i += step) {
        var a = nodes[i].position(), nearest = Infinity;
        for (var j = 0; j < nodes.length; j += 1) {
          if (j === i) continue;
          var b = nodes[j].position(), d = (a.x - b.x) * (a.x - b.x) + (a.y - b.y) * (a.y - b.y);
          if (d < nearest) nearest = d;
        }
        if (nearest < Infinity) gaps.push(Math.sqrt(nearest));
      }
      gaps.sort(function (x, y) { return x - y; });
      return gaps.length ? Math.max(gaps[Math.floor(gaps.length / 2)], 1) : 100;
    }
    function fitted() {
      // Half as far again as the fitted view, and far enough for neighbours to sit LABEL_ROOM_PX apart.
      labelZoom = Math.min(cy.maxZoom() * 0.75, Math.max(cy.zoom() * 1.5, LABEL_ROOM_PX / spacing()));
      labelsShown = null;
      updateLabels();
      sizeLabels();
      updateAxis();
    }
    function fitView() {
      cy.fit(undefined, layoutPadding(layoutName));
      fitted();
    }
    cy.on("zoom", function () {
      updateLabels();
      if (!labelFrame) labelFrame = window.requestAnimationFrame(sizeLabels);
    });

    // Year ticks under the canvas, in the year layout: DOM labels that follow pan and zoom.
    var ticks = byYear.ticks.map(function (t) {
      var tick = element("span", { "class": "moekb-explorer__tick" + (t.gap ? " moekb-explorer__tick--break" : "") },
        t.text);
      axis.appendChild(tick);
      return { node: tick, x: t.x };
    });
    function updateAxis() {
      axis.hidden = layoutName !== "year";
      if (axis.hidden) return;
      var zoom = cy.zoom(), pan = cy.pan(), width = cy.width(), lastRight = -Infinity;
      ticks.forEach(function (t) { if (!t.half) t.half = t.node.offsetWidth / 2; }); // read once: no layout thrash
      ticks.forEach(function (t) {
        var x = t.x * zoom + pan.x, half = t.half || 16;
        var show = x - half >= 0 && x + half <= width && x - half > lastRight + 6;
        t.node.style.visibility = show ? "visible" : "hidden";
        t.node.style.left = Math.round(x) + "px";
        if (show) lastRight = x + half;
      });
    }
    cy.on("viewport", updateAxis);
    cy.on("resize", updateAxis);

    var chosen = null; // the selected paper's id
    var restored = false; // the URL is left alone until the state it asked for is in place
    function saveState() {
      if (!restored) return;
      var form = new FormData(controls);
      var perspectives = form.getAll("perspective");
      var state = {};
      if (perspectives.length !== data.perspectives.length) state.perspective = perspectives.join(",");
      ["subcategory", "modality", "gap"].forEach(function (name) { if (form.get(name)) state[name] = form.get(name); });
      var from = parseInt(form.get("from"), 10), to = parseInt(form.get("to"), 10);
      if (!isNaN(from) && from !== years[0]) state.year_from = String(from);
      if (!isNaN(to) && to !== years[1]) state.year_to = String(to);
      var search = String(form.get("search") || "").trim();
      if (search) state.q = search;
      if (layoutName !== "taxonomy") state.layout = layoutName;
      if (chosen) state.paper = chosen;
      writeState(state);
    }

    function row(list, term, value) {
      if (value === "" || value === undefined || value === null) return;
      list.appendChild(element("dt", {}, term));
      list.appendChild(element("dd", {}, String(value)));
    }

    function fillPanel(n) {
      panel.textContent = "";
      var close = element("button", { type: "button", "class": "moekb-explorer__close", "aria-label": "Clear the selection",
        title: "Clear the selection" }, "×");
      close.addEventListener("click", function () { choose(null); });
      panel.appendChild(close);
      panel.appendChild(element("p", { "class": "moekb-explorer__title", role: "heading", "aria-level": "3" }, n.title));
      var facts = element("dl", { "class": "moekb-explorer__facts" });
      row(facts, "Authors", authorLine(n.authors));
      row(facts, "Year", n.year);
      row(facts, "Method", n.method);
      row(facts, "Perspective", perspectiveNames[n.perspective] || n.perspective);
      row(facts, "Sub-category", subNames[n.subcategory] || n.subcategory);
      row(facts, "Domain", n.domain);
      row(facts, "Cited by", n.cited_by + (n.cited_by === 1 ? " paper" : " papers") + " in the knowledge base");
      row(facts, "Citations", n.checked ? "checked (its reference list was read)"
        : "not checked yet (its reference list was not read)");
      panel.appendChild(facts);
      var href = links[n.id];
      if (href) panel.appendChild(element("a", { href: href, "class": "md-button md-button--primary moekb-explorer__open" },
        "Open the paper"));
      panel.setAttribute("data-paper", n.id);
    }

    // Keep the chosen node clear of the panel, which covers part of the canvas.
    function revealBeside(node) {
      var canvasBox = canvas.getBoundingClientRect(), box = panel.getBoundingClientRect();
      var p = node.renderedPosition(), margin = node.renderedOuterWidth() / 2 + 12;
      var left = box.left - canvasBox.left, top = box.top - canvasBox.top;
      if (p.x + margin < left || p.y + margin < top || p.y - margin > top + box.height) return;
      var by = box.width > canvasBox.width * 0.6 ? { x: 0, y: Math.min(0, top - margin - p.y) }
        : { x: Math.min(0, left - margin - p.x), y: 0 };
      if (by.x || by.y) cy.panBy(by);
    }

    function choose(id, reveal) {
      cy.elements(".chosen").removeClass("chosen");
      var node = id ? cy.getElementById(id) : null;
      chosen = node && node.nonempty() && !node.hasClass("hidden") ? id : null;
      if (chosen) {
        node.addClass("chosen");
        node.connectedEdges().addClass("chosen");
        fillPanel(byId[chosen]);
        panel.hidden = false;
        container.setAttribute("data-selected", chosen);
        if (reveal) revealBeside(node);
      } else {
        panel.hidden = true;
        panel.textContent = "";
        panel.removeAttribute("data-paper");
        container.removeAttribute("data-selected");
      }
      saveState();
    }

    function apply() {
      var form = new FormData(controls);
      var perspectives = form.getAll("perspective");
      var sub = form.get("subcategory"), modality = form.get("modality"), gap = form.get("gap");
      var from = parseInt(form.get("from"), 10), to = parseInt(form.get("to"), 10);
      var words = String(form.get("search") || "").toLowerCase().split(/\s+/).filter(Boolean);
      var visible = 0, matches = 0;
      cy.batch(function () {
        cy.nodes().forEach(function (node) {
          var d = node.data();
          var shown = perspectives.indexOf(d.perspective) !== -1 && (!sub || d.subcategory === sub) &&
            (!modality || d.modalities.indexOf(modality) !== -1) && (!gap || d.gaps.indexOf(gap) !== -1) &&
            (isNaN(from) || d.year >= from) && (isNaN(to) || d.year <= to);
          node.toggleClass("hidden", !shown);
          var match = shown && words.length > 0 && words.every(function (w) { return d.text.indexOf(w) !== -1; });
          node.toggleClass("match", match);
          node.toggleClass("faded", shown && words.length > 0 && !match);
          if (shown) visible += 1;
          if (match) matches += 1;
        });
        cy.edges().forEach(function (edge) {
          var hidden = edge.source().hasClass("hidden") || edge.target().hasClass("hidden");
          edge.toggleClass("hidden", hidden);
          edge.toggleClass("faded", !hidden && words.length > 0 &&
            !(edge.source().hasClass("match") || edge.target().hasClass("match")));
        });
      });
      // Recompute styles now rather than on the next animation frame, so that what a script (or a
      // test) reads through ':visible' right after a filter change agrees with the status line.
      cy.elements().updateStyle();
      var edges = cy.edges().not(".hidden").length;
      status.textContent = "Showing " + visible + " of " + data.nodes.length + " papers and " + edges + " of " +
        data.edges.length + " citations" + (words.length ? "; " + matches + " match the search" : "") + ".";
      container.setAttribute("data-visible-papers", String(visible));
      if (chosen && cy.getElementById(chosen).hasClass("hidden")) choose(null);
      else saveState();
    }

    function setLayout(name, animate) {
      if (name !== "year" && name !== "taxonomy") return;
      layoutName = name;
      var positions = name === "year" ? byYear.positions : taxonomy;
      var reduce = media("(prefers-reduced-motion: reduce)");
      container.setAttribute("data-layout", name + "-moving");
      var layout = cy.nodes().layout({
        name: "preset", positions: function (node) { return positions[node.id()]; }, fit: true,
        padding: layoutPadding(name),
        animate: Boolean(animate) && !(reduce && reduce.matches) && data.nodes.length <= 3000,
        animationDuration: 450, animationEasing: "ease-in-out-cubic"
      });
      layout.one("layoutstop", function () {
        fitted();
        container.setAttribute("data-layout", name);
      });
      layout.run();
      saveState();
    }

    controls.addEventListener("input", apply);
    controls.addEventListener("change", apply);
    controls.addEventListener("reset", function () { setTimeout(function () { apply(); fitView(); }, 0); });
    controls.querySelector("input[name=search]").addEventListener("keydown", function (event) {
      if (event.key === "Enter") {
        var found = cy.nodes(".match");
        if (found.length) cy.animate({ fit: { eles: found, padding: 60 } }, { duration: 300 });
      }
    });
    bar.layouts.addEventListener("change", function (event) {
      if (event.target.name === "layout" && event.target.checked) setLayout(event.target.value, true);
    });

    // Touch: the first tap selects, a second tap on the selected paper opens it. Mouse: hover shows
    // the title, a click opens the paper (and selects it, so that Back shows where one came from).
    // Browsers emulate mouse events after a touch; those are not taken for a mouse.
    var lastTouch = -Infinity;
    function fromTouch(event) {
      var original = event && event.originalEvent;
      if (original && /^touch/.test(original.type)) { lastTouch = Date.now(); return true; }
      if (original && original.pointerType === "touch") { lastTouch = Date.now(); return true; }
      return Date.now() - lastTouch < TOUCH_MOUSE_GRACE_MS;
    }
    canvas.addEventListener("touchstart", function () { lastTouch = Date.now(); tip.hidden = true; }, { passive: true });

    // Once a touch screen is seen, the wording stays (emulators flip the media queries back and forth).
    var touchSeen = false;
    function describeHelp() {
      touchSeen = touchSeen || touchFirst() || lastTouch > 0;
      bar.help.textContent = helpText(touchSeen);
      container.setAttribute("data-pointer", touchSeen ? "touch" : "mouse");
    }
    describeHelp();
    ["(hover: none)", "(pointer: coarse)"].forEach(function (query) {
      var list = media(query);
      if (list && list.addEventListener) list.addEventListener("change", describeHelp);
    });

    cy.on("mouseover", "node", function (event) {
      if (fromTouch(event)) return;
      var node = event.target;
      node.addClass("hover");
      node.connectedEdges().addClass("hover");
      tip.textContent = node.data("title") + " (" + node.data("year") + ")";
      var p = node.renderedPosition();
      tip.style.left = Math.round(p.x + 12) + "px";
      tip.style.top = Math.round(p.y + 12) + "px";
      tip.hidden = false;
      canvas.style.cursor = "pointer";
    });
    cy.on("mouseout", "node", function (event) {
      event.target.removeClass("hover");
      event.target.connectedEdges().removeClass("hover");
      tip.hidden = true;
      canvas.style.cursor = "";
    });
    cy.on("tap", function (event) {
      var touch = fromTouch(event);
      if (touch) describeHelp();
      if (event.target === cy) { choose(null); return; }
      if (!event.target.isNode || !event.target.isNode()) return;
      var id = event.target.id(), href = links[id];
      if (touch && chosen !== id) { choose(id, true); return; }
      choose(id);
      if (href) window.location.assign(href);
    });
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && chosen && !panel.hidden) choose(null);
    });

    // Follow the palette switch, so that label outlines match the page behind them.
    if (window.MutationObserver) {
      new MutationObserver(function () {
        cy.style().selector("node").style({ "text-outline-color": paperColour() }).update();
      }).observe(document.body, { attributes: true, attributeFilter: ["data-md-color-scheme"] });
    }

    apply();
    if (wanted.paper) choose(wanted.paper);
    restored = true;
    saveState(); // drops what could not be restored (an unknown paper, a filtered-out one)
    fitted();
    container.setAttribute("data-layout", layoutName);
    container.setAttribute("data-ready", "true");
    return cy;
  }

  function start() {
    var container = document.getElementById("moekb-explorer");
    if (!container || container.getAttribute("data-ready") === "true") return;
    current = init(container);
    window.moekbExplorer = current; // for the browser tests and for poking at the graph in the console
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
