// Keeps the task list current without reloading the page, so a track that is playing keeps playing.
// While a task is in progress the list is checked every few seconds (data-refresh on <body>),
// otherwise five times less often; the server answers 304 when nothing changed. Only the tasks
// that changed are redrawn.
// Choosing an example in the form fills in its endpoint and payload.
(() => {
  "use strict";

  const example = document.getElementById("submit-example");
  if (!example) return;
  example.addEventListener("change", () => {
    const chosen = example.selectedOptions[0];
    document.getElementById("submit-path").value = chosen.dataset.path;
    document.getElementById("submit-payload").value = chosen.dataset.payload;
  });
})();

(() => {
  "use strict";

  const container = document.getElementById("tasks");
  if (!container) return;
  const seconds = Math.max(parseFloat(document.body.dataset.refresh) || 3, 0.1);

  // Times come in UTC; show them in the reader's own zone.
  const showLocalTimes = (root) => {
    const today = new Date().toDateString();
    root.querySelectorAll("time[datetime]").forEach((element) => {
      const moment = new Date(element.dateTime);
      if (Number.isNaN(moment.getTime())) return;
      element.title = moment.toLocaleString();
      element.textContent = moment.toDateString() === today
        ? moment.toLocaleTimeString()
        : moment.toLocaleString();
    });
  };

  // A cover the provider no longer serves (or a simulated link) shows the placeholder.
  document.addEventListener("error", (event) => {
    const image = event.target;
    if (image instanceof HTMLImageElement && image.dataset.fallback &&
        image.getAttribute("src") !== image.dataset.fallback) {
      image.src = image.dataset.fallback;
    }
  }, true);

  // A player that is playing moves into the redrawn task when it plays the same file.
  const keepPlaying = (old, fresh) => {
    old.querySelectorAll("audio, video").forEach((player) => {
      if (player.paused) return;
      const twin = [...fresh.querySelectorAll("audio, video")]
        .find((other) => other.dataset.player === player.dataset.player);
      if (twin && twin.getAttribute("src") === player.getAttribute("src")) twin.replaceWith(player);
    });
  };

  const merge = (html) => {
    const template = document.createElement("template");
    template.innerHTML = html;
    const next = template.content.firstElementChild;
    const current = container.firstElementChild;
    if (!next || !current || current.className !== next.className) {
      container.replaceChildren(template.content);
      showLocalTimes(container);
      return;
    }
    current.dataset.active = next.dataset.active;
    const existing = new Map([...current.children].map((element) => [element.dataset.task, element]));
    let cursor = current.firstElementChild;
    for (const fresh of [...next.children]) {
      const old = existing.get(fresh.dataset.task);
      existing.delete(fresh.dataset.task);
      let node = fresh;
      if (old && old.dataset.version === fresh.dataset.version) {
        node = old;
      } else {
        if (old) keepPlaying(old, fresh);
        showLocalTimes(fresh);
        if (old) {
          if (old === cursor) cursor = old.nextElementSibling;
          old.remove();
        }
      }
      if (node === cursor) {
        cursor = cursor.nextElementSibling;
      } else {
        current.insertBefore(node, cursor);
      }
    }
    existing.forEach((element) => element.remove());
  };

  const active = () => container.querySelector("[data-active='true']") !== null;

  const refresh = async () => {
    try {
      const response = await fetch(container.dataset.src, {
        cache: "no-store",
        headers: { "If-None-Match": `"${container.dataset.version}"` },
      });
      if (response.status === 200) {
        const html = await response.text();
        merge(html);
        container.dataset.version = (response.headers.get("ETag") || "").replace(/^W\//, "").replaceAll('"', "");
      }
    } catch (error) {
      // The server is restarting or gone for a moment: try again at the next turn.
    }
    window.setTimeout(refresh, (active() ? seconds : seconds * 5) * 1000);
  };

  showLocalTimes(container);
  window.setTimeout(refresh, (active() ? seconds : seconds * 5) * 1000);
})();
