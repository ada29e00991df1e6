// The library: a grid of videos with search (the search API), a tag filter and cursor paging.

import { api, query } from './api.js';
import { duration, h, notice, page, shortAddress } from './ui.js';

const PAGE_SIZE = 24;

export function card(media) {
  const ready = media.state === 'ready';
  const thumb = ready && !media.gated
    ? h('img', { src: media.thumbnail_url, alt: '', loading: 'lazy', width: 320, height: 180 })
    : h('div', { class: 'thumb-placeholder', 'aria-hidden': 'true' }, media.gated ? 'For token holders' : media.state);
  return h('li', { class: 'card' },
    h('a', { href: `/watch/${media.id}`, class: 'card-link' },
      h('div', { class: 'thumb' }, thumb,
        media.duration_s ? h('span', { class: 'duration' }, duration(media.duration_s)) : null,
        media.gated ? h('span', { class: 'badge gated' }, 'Gated') : null,
        ready ? null : h('span', { class: 'badge state' }, media.state)),
      h('h2', { class: 'card-title' }, media.title || media.filename || 'Untitled')),
    h('p', { class: 'meta' }, `by ${shortAddress(media.owner)}`),
    media.tags?.length
      ? h('ul', { class: 'tags', 'aria-label': 'Tags' }, media.tags.map((tag) => h('li', {},
        h('a', { href: `/?tag=${encodeURIComponent(tag)}` }, `#${tag}`))))
      : null);
}

export async function show() {
  const params = new URLSearchParams(location.search);
  const state = { q: params.get('q') || '', tag: params.get('tag') || '', cursor: null };
  const [q, tag] = [
    h('input', { type: 'search', id: 'q', name: 'q', value: state.q, placeholder: 'Title, description or tag' }),
    h('input', { type: 'text', id: 'tag', name: 'tag', value: state.tag, placeholder: 'e.g. music' }),
  ];
  const grid = h('ul', { class: 'grid', 'aria-label': 'Videos' });
  const status = h('p', { class: 'status', role: 'status', 'aria-live': 'polite' });
  const more = h('button', { type: 'button', hidden: true, onclick: () => load(false) }, 'Load more');
  const form = h('form', { class: 'search', role: 'search', onsubmit: (event) => {
    event.preventDefault();
    state.q = q.value.trim();
    state.tag = tag.value.trim();
    history.replaceState(null, '', `/${query({ q: state.q, tag: state.tag })}`);
    load(true);
  } },
  h('div', { class: 'field' }, h('label', { for: 'q' }, 'Search'), q),
  h('div', { class: 'field' }, h('label', { for: 'tag' }, 'Tag'), tag),
  h('button', { type: 'submit', class: 'primary' }, 'Search'));

  async function load(fresh) {
    more.disabled = true;
    if (fresh) {
      state.cursor = null;
      grid.replaceChildren();
    }
    status.textContent = 'Loading…';
    try {
      const result = await api(`/media${query({ q: state.q, tag: state.tag, limit: PAGE_SIZE, cursor: state.cursor })}`, { auth: false });
      grid.append(...result.items.map(card));
      state.cursor = result.next_cursor || null;
      more.hidden = !state.cursor;
      const count = grid.children.length;
      status.textContent = count ? `${count} video${count === 1 ? '' : 's'}` : 'No videos match.';
    } catch (error) {
      status.replaceChildren(notice(`Could not load videos: ${error.message}`, 'error'));
    } finally {
      more.disabled = false;
    }
  }

  page('Library', form, status, grid, h('div', { class: 'more' }, more));
  await load(true);
}
