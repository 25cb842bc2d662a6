// The citation-graph explorer (vendored Cytoscape.js). The page inlines the graph as a JSON literal
// (window.moekbGraphData), so nothing is fetched and the page also works from file://.
// The graph page loads this file itself (no other page needs Cytoscape), from its content, before the
// theme's own scripts: so it starts on DOMContentLoaded, which every engine's pages fire.
// Every label is set with textContent: titles and names are contributor text, never HTML.
(function () {
  "use strict";

  var current = null; // the live Cytoscape instance, if the current page has an explorer

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

  function style(ink) {
    return [
      { selector: "node", style: {
        "background-color": "data(colour)", "width": "data(size)", "height": "data(size)",
        "label": "data(id)", "font-size": 9, "color": ink, "min-zoomed-font-size": 12, // ids only once zoomed in
        "text-valign": "bottom", "text-margin-y": 3, "border-width": 0
      } },
      { selector: "edge", style: {
        "width": 1.2, "line-color": ink, "target-arrow-color": ink, "target-arrow-shape": "triangle",
        "arrow-scale": 0.8, "curve-style": "straight", "opacity": 0.55
      } },
      { selector: ".hidden", style: { "display": "none" } },
      { selector: ".faded", style: { "opacity": 0.12 } },
      { selector: "node.match", style: { "border-width": 3, "border-color": "#e91e63" } },
      { selector: "node.hover", style: { "border-width": 2, "border-color": ink } },
      { selector: "edge.hover", style: { "opacity": 1, "width": 2.2 } }
    ];
  }

  function init(container) {
    var data = window.moekbGraphData;
    var colours = {};
    data.perspectives.forEach(function (p) { colours[p.id] = p.colour; });
    var yearsSeen = data.nodes.map(function (n) { return n.year; });
    var years = [Math.min.apply(null, yearsSeen), Math.max.apply(null, yearsSeen)];
    var controls = buildControls(container, data, years);
    var canvas = element("div", { "class": "moekb-explorer__canvas", role: "img",
      "aria-label": "Citation graph of " + data.nodes.length + " papers; the list below has the same papers" });
    var tip = element("div", { "class": "moekb-explorer__tip", role: "tooltip" });
    tip.hidden = true;
    var status = element("p", { "class": "moekb-explorer__status", "aria-live": "polite" });
    canvas.appendChild(tip);
    container.appendChild(canvas);
    container.appendChild(status);

    var links = paperLinks();
    var ink = "#8c8c8c"; // mid grey: readable on the light and the dark palette
    var elements = data.nodes.map(function (n) {
      return { group: "nodes", position: { x: n.x, y: n.y }, data: {
        id: n.id, title: n.title, year: n.year, perspective: n.perspective, subcategory: n.subcategory,
        modalities: n.modalities, gaps: n.gaps, colour: colours[n.perspective],
        size: 14 + 9 * Math.sqrt(n.cited_by),
        text: (n.title + " " + n.id + " " + n.authors.join(" ")).toLowerCase()
      } };
    }).concat(data.edges.map(function (e) {
      var source = data.nodes[e[0]].id, target = data.nodes[e[1]].id; // edges are [citing, cited] node positions
      return { group: "edges", data: { id: source + "->" + target, source: source, target: target } };
    }));
    var cy = cytoscape({
      container: canvas, elements: elements, style: style(ink), layout: { name: "preset", fit: true, padding: 24 },
      minZoom: 0.05, maxZoom: 4, boxSelectionEnabled: false, autoungrabify: true,
      // With thousands of citations, drop edges while panning or zooming so the view keeps up.
      hideEdgesOnViewport: data.edges.length > 3000, textureOnViewport: data.edges.length > 3000
    });
    cy.userPanningEnabled(true);

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
    }

    controls.addEventListener("input", apply);
    controls.addEventListener("change", apply);
    controls.addEventListener("reset", function () { setTimeout(function () { apply(); cy.fit(undefined, 24); }, 0); });
    controls.querySelector("input[name=search]").addEventListener("keydown", function (event) {
      if (event.key === "Enter") {
        var found = cy.nodes(".match");
        if (found.length) cy.animate({ fit: { eles: found, padding: 60 } }, { duration: 300 });
      }
    });

    cy.on("mouseover", "node", function (event) {
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
    cy.on("tap", "node", function (event) {
      var href = links[event.target.id()];
      if (href) window.location.assign(href);
    });

    apply();
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
