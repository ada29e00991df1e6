// DOM helpers: elements are built, never parsed from strings, so titles and descriptions
// from the API cannot inject markup.

/** h('a', {href: '/'}, 'text', child…): attributes, `on…` listeners, children. */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      element.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      element.className = value;
    } else if (key === 'text') {
      element.textContent = value;
    } else if (value === true) {
      element.setAttribute(key, '');
    } else {
      element.setAttribute(key, value);
    }
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

let moveFocus = false;
/** After an in-app navigation, the next page takes focus (a first load leaves it alone). */
export function navigated() {
  moveFocus = true;
}

/** Replaces the main area's content and sets the title; moves focus there after navigation. */
export function page(title, ...children) {
  const main = document.getElementById('main');
  document.title = `${title} · StreamGate`;
  main.replaceChildren(h('h1', {}, title), ...children);
  if (moveFocus) main.focus({ preventScroll: true });
  return main;
}

let toastTimer;
export function toast(message) {
  const element = document.getElementById('toast');
  element.textContent = message;
  element.classList.add('shown');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => element.classList.remove('shown'), 4000);
}

/** A message box; kind 'error' is announced at once. */
export function notice(message, kind = 'info', ...extra) {
  return h('div', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status' },
    h('p', {}, message), ...extra);
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return '';
  const total = Math.round(seconds);
  const h_ = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, '0');
  return h_ ? `${h_}:${String(m).padStart(2, '0')}:${s}` : `${m}:${s}`;
}

export function bytes(n) {
  if (!Number.isFinite(n)) return '';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function shortAddress(address) {
  if (!address) return 'unknown';
  return /^0x[0-9a-fA-F]{40}$/.test(address) ? `${address.slice(0, 6)}…${address.slice(-4)}` : address;
}

export function when(text) {
  if (!text) return '';
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? text : date.toLocaleString();
}

/** A labelled form field; returns [wrapper, input]. */
export function field(label, attrs = {}, tag = 'input') {
  const id = attrs.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  const input = h(tag, { ...attrs, id });
  const hint = attrs['data-hint']
    ? h('span', { class: 'hint', id: `${id}-hint` }, attrs['data-hint']) : null;
  if (hint) input.setAttribute('aria-describedby', hint.id);
  return [h('div', { class: 'field' }, h('label', { for: id }, label), input, hint), input];
}

export function progress(label) {
  const bar = h('progress', { max: 100, value: 0, 'aria-label': label });
  return bar;
}
