// My videos: edit title, description and tags; set or clear the NFT gate; delete.

import { api, getSession, query } from './api.js';
import { signInButton } from './main.js';
import { field, h, notice, page, toast } from './ui.js';

const ADDRESS = /^0x[0-9a-fA-F]{40}$/;
const TOKEN_ID = /^(0x[0-9a-fA-F]{1,64}|[0-9]{1,78})$/;

function editForm(media, onSaved) {
  const [titleField, title] = field('Title', { name: 'title', value: media.title, maxlength: 200 });
  const [descField, description] = field('Description', { name: 'description', rows: 3 }, 'textarea');
  description.value = media.description || '';
  const [tagsField, tags] = field('Tags', { name: 'tags', value: (media.tags || []).join(', '), 'data-hint': 'Comma separated' });
  const out = h('div', { role: 'status', 'aria-live': 'polite' });
  return h('form', { class: 'edit', onsubmit: async (event) => {
    event.preventDefault();
    try {
      const saved = await api(`/media/${media.id}`, { method: 'PATCH', body: {
        title: title.value.trim(), description: description.value.trim(),
        tags: tags.value.split(',').map((t) => t.trim()).filter(Boolean),
      } });
      out.replaceChildren(notice('Saved.'));
      onSaved(saved);
    } catch (error) {
      out.replaceChildren(notice(`Not saved: ${error.message}`, 'error'));
    }
  } }, h('h3', {}, 'Details'), titleField, descField, tagsField, h('button', { type: 'submit', class: 'primary' }, 'Save'), out);
}

function gateForm(media) {
  const [chainField, chain] = field('Chain id', { name: 'chain_id', inputmode: 'numeric', value: String(getSession()?.chain_id || 1), required: true });
  const [contractField, contract] = field('Contract address', { name: 'contract', placeholder: '0x…', required: true, spellcheck: 'false', 'data-hint': '0x and 40 hex digits' });
  const [standardField, standard] = field('Standard', { name: 'standard' }, 'select');
  standard.append(h('option', { value: 'erc721' }, 'ERC-721'), h('option', { value: 'erc1155' }, 'ERC-1155'));
  const [tokenField, tokenId] = field('Token id', { name: 'token_id', 'data-hint': 'Optional for ERC-721 (any token of the contract); required for ERC-1155' });
  const [minField, minBalance] = field('Minimum balance', { name: 'min_balance', type: 'number', min: 1, step: 1, value: '1' });
  const current = h('p', { class: 'gate-state' }, 'Loading the gate…');
  const out = h('div', { role: 'status', 'aria-live': 'polite' });
  const clear = h('button', { type: 'button', hidden: true }, 'Remove gate');

  function showGate(gate) {
    current.textContent = gate
      ? `Gated: ${gate.standard.toUpperCase()} ${gate.contract} on chain ${gate.chain_id}${gate.token_id ? `, token ${gate.token_id}` : ''}, at least ${gate.min_balance}.`
      : 'Not gated: anyone can watch.';
    clear.hidden = !gate;
    if (gate) {
      chain.value = String(gate.chain_id);
      contract.value = gate.contract;
      standard.value = gate.standard;
      tokenId.value = gate.token_id || '';
      minBalance.value = String(gate.min_balance);
    }
  }
  api(`/media/${media.id}/gate`, { auth: false }).then((state) => showGate(state.gate), () => { current.textContent = 'The gate could not be read.'; });

  function invalid(input, message) {
    input.setAttribute('aria-invalid', 'true');
    input.focus();
    out.replaceChildren(notice(message, 'error'));
    return null;
  }
  function validated() {
    for (const input of [chain, contract, tokenId, minBalance]) input.removeAttribute('aria-invalid');
    const chainId = chain.value.trim();
    if (!/^[0-9]{1,19}$/.test(chainId)) return invalid(chain, 'Chain id must be a whole number, e.g. 1 for Ethereum mainnet.');
    if (!ADDRESS.test(contract.value.trim())) return invalid(contract, 'The contract address must be 0x followed by 40 hexadecimal digits.');
    const id = tokenId.value.trim();
    if (id && !TOKEN_ID.test(id)) return invalid(tokenId, 'The token id must be a decimal number or 0x hex.');
    if (!id && standard.value === 'erc1155') return invalid(tokenId, 'An ERC-1155 gate needs a token id.');
    const min = Number(minBalance.value);
    if (!Number.isInteger(min) || min < 1) return invalid(minBalance, 'The minimum balance must be a whole number of at least 1.');
    return { chain_id: Number(chainId), contract: contract.value.trim(), standard: standard.value, token_id: id || null, min_balance: min };
  }

  clear.addEventListener('click', async () => {
    try {
      showGate((await api(`/media/${media.id}/gate`, { method: 'DELETE' })).gate);
      out.replaceChildren(notice('Gate removed.'));
    } catch (error) {
      out.replaceChildren(notice(`Not removed: ${error.message}`, 'error'));
    }
  });
  return h('form', { class: 'gate', novalidate: true, onsubmit: async (event) => {
    event.preventDefault();
    const body = validated();
    if (!body) return;
    try {
      showGate((await api(`/media/${media.id}/gate`, { method: 'PUT', body })).gate);
      out.replaceChildren(notice('Gate set.'));
    } catch (error) {
      out.replaceChildren(notice(`Not set: ${error.message}`, 'error'));
    }
  } }, h('h3', {}, 'NFT gate'), current, chainField, contractField, standardField, tokenField, minField,
  h('div', { class: 'row' }, h('button', { type: 'submit', class: 'primary' }, 'Set gate'), clear), out);
}

function deleteControl(media, onDeleted) {
  const box = h('div', { class: 'delete' });
  const ask = h('button', { type: 'button', class: 'danger' }, 'Delete…');
  ask.addEventListener('click', () => {
    const confirm = h('button', { type: 'button', class: 'danger' }, 'Delete permanently');
    const cancel = h('button', { type: 'button' }, 'Cancel');
    const question = h('div', { role: 'alertdialog', 'aria-label': 'Confirm delete', class: 'confirm' },
      h('p', {}, `Delete “${media.title || 'this video'}” and all its files? This cannot be undone.`), h('div', { class: 'row' }, confirm, cancel));
    cancel.addEventListener('click', () => { box.replaceChildren(ask); ask.focus(); });
    confirm.addEventListener('click', async () => {
      try {
        await api(`/media/${media.id}`, { method: 'DELETE' });
        toast('Deleted');
        onDeleted();
      } catch (error) {
        question.append(notice(`Not deleted: ${error.message}`, 'error'));
      }
    });
    box.replaceChildren(question);
    cancel.focus();
  });
  box.append(ask);
  return box;
}

function item(media, list) {
  const heading = h('h2', {}, h('a', { href: `/watch/${media.id}` }, media.title || media.filename || 'Untitled'));
  const state = h('p', { class: 'meta' }, `${media.state}${media.gated ? ' · gated' : ''}`);
  const li = h('li', { class: 'mine-item' });
  li.append(heading, state, h('details', {}, h('summary', {}, 'Edit'),
    editForm(media, (saved) => { heading.firstChild.textContent = saved.title || 'Untitled'; }),
    gateForm(media), deleteControl(media, () => { li.remove(); if (!list.children.length) list.replaceWith(notice('You have no videos yet.')); })));
  return li;
}

export async function show() {
  const session = getSession();
  if (!session) {
    page('My videos', notice('Sign in with your wallet to manage your videos.', 'info', signInButton()));
    return undefined;
  }
  const list = h('ul', { class: 'mine' });
  const more = h('button', { type: 'button', hidden: true }, 'Load more');
  const status = h('p', { role: 'status' }, 'Loading…');
  let cursor = null;
  async function load() {
    try {
      const result = await api(`/media${query({ owner: session.address, limit: 20, cursor })}`, { auth: false });
      list.append(...result.items.map((media) => item(media, list)));
      cursor = result.next_cursor;
      more.hidden = !cursor;
      status.textContent = list.children.length ? '' : 'You have no videos yet.';
    } catch (error) {
      status.replaceChildren(notice(`Could not load your videos: ${error.message}`, 'error'));
    }
  }
  more.addEventListener('click', load);
  page('My videos', status, list, more);
  await load();
  return undefined;
}
