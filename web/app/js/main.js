// The app shell: the account area, client-side routing over the paths the server answers
// with index.html, and link interception so navigation needs no page load.

import { getSession } from './api.js';
import { h, navigated, notice, page, shortAddress, toast } from './ui.js';
import { signIn, signOut, WalletError } from './wallet.js';

const routes = [
  [/^\/$/, () => import('./library.js')],
  [/^\/watch\/([^/]+)$/, () => import('./watch.js')],
  [/^\/upload$/, () => import('./upload.js')],
  [/^\/mine$/, () => import('./mine.js')],
  [/^\/operator$/, () => import('./operator.js')],
];

let leave = null;

export async function render() {
  if (leave) {
    leave();
    leave = null;
  }
  const path = location.pathname;
  for (const link of document.querySelectorAll('nav a')) {
    if (link.getAttribute('href') === path) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  for (const [pattern, load] of routes) {
    const match = pattern.exec(path);
    if (match) {
      const module = await load();
      leave = (await module.show(...match.slice(1).map(decodeURIComponent))) || null;
      return;
    }
  }
  page('Not found', notice('There is no page here.', 'error'), h('a', { href: '/' }, 'Back to the library'));
}

export function navigate(path) {
  history.pushState(null, '', path);
  navigated();
  render();
}

/** Runs wallet sign-in, reporting a refusal or failure where the person can read it. */
export async function runSignIn(button) {
  if (button) button.disabled = true;
  try {
    const session = await signIn();
    toast(`Signed in as ${shortAddress(session.address)}`);
    return true;
  } catch (error) {
    const message = error instanceof WalletError ? error.message : `Sign-in failed: ${error.message}`;
    showSignInError(message);
    return false;
  } finally {
    if (button) button.disabled = false;
  }
}

function showSignInError(message) {
  const account = document.getElementById('account');
  account.querySelector('.signin-error')?.remove();
  account.append(h('p', { class: 'signin-error', role: 'alert' }, message));
}

export function signInButton(label = 'Sign in with wallet') {
  const button = h('button', { type: 'button', class: 'primary', onclick: () => runSignIn(button) }, label);
  return button;
}

function renderAccount() {
  const account = document.getElementById('account');
  const session = getSession();
  if (session) {
    account.replaceChildren(
      h('span', { class: 'who', title: session.address }, `Signed in: ${shortAddress(session.address)}`),
      h('button', { type: 'button', onclick: async () => { await signOut(); toast('Signed out'); } }, 'Sign out'),
    );
  } else {
    account.replaceChildren(signInButton());
  }
}

document.addEventListener('click', (event) => {
  const link = event.target.closest('a[href]');
  if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || url.pathname.startsWith('/api/') || link.target || link.hasAttribute('download')) return;
  if (!routes.some(([pattern]) => pattern.test(url.pathname))) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});

window.addEventListener('popstate', () => { navigated(); render(); });
let lastToken = getSession()?.token;
window.addEventListener('session-change', () => {
  renderAccount();
  const token = getSession()?.token;
  if (token !== lastToken) {
    lastToken = token;
    render();
  }
});
window.addEventListener('storage', () => window.dispatchEvent(new Event('session-change')));

renderAccount();
render();
