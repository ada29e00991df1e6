// Wallet sign-in over an injected EIP-1193 provider (MetaMask, Rabby, …): request the account,
// fetch the SIWE challenge, personal_sign it, log in. No library: four provider calls.

import { api, ApiError, getSession, setSession } from './api.js';

/** An error whose message is meant for the person at the keyboard. */
export class WalletError extends Error {}

const REFUSED = 4001; // EIP-1193: the user rejected the request.

function hex(text) {
  return `0x${Array.from(new TextEncoder().encode(text), (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

async function ask(provider, method, params, refused) {
  try {
    return await provider.request(params ? { method, params } : { method });
  } catch (error) {
    if (error?.code === REFUSED) throw new WalletError(refused);
    throw new WalletError(`The wallet failed: ${error?.message || error}`);
  }
}

export async function signIn() {
  const provider = window.ethereum;
  if (!provider?.request) {
    throw new WalletError('No wallet found in this browser. Install a wallet extension such as MetaMask or Rabby, then reload the page.');
  }
  const accounts = await ask(provider, 'eth_requestAccounts', null,
    'You declined to connect your wallet, so you are not signed in.');
  const address = accounts?.[0];
  if (!address) throw new WalletError('The wallet shared no account. Unlock it and try again.');
  const chainId = Number.parseInt(await ask(provider, 'eth_chainId', null, 'The wallet did not tell its network.'), 16);
  let challenge;
  try {
    challenge = await api('/auth/challenge', { method: 'POST', body: { address, chain_id: chainId }, auth: false });
  } catch (error) {
    if (error instanceof ApiError && error.code === 'chain_not_allowed') {
      throw new WalletError(`Wrong network: your wallet is on chain ${chainId}, which this server does not accept. Switch your wallet's network and try again.`);
    }
    throw error;
  }
  const signature = await ask(provider, 'personal_sign', [hex(challenge.message), address],
    'You refused to sign the sign-in message, so you are not signed in. Signing costs nothing and sends no transaction.');
  try {
    setSession(await api('/auth/login', { method: 'POST', body: { message: challenge.message, signature }, auth: false }));
  } catch (error) {
    if (error instanceof ApiError && ['nonce_expired', 'nonce_unknown', 'nonce_used', 'message_expired'].includes(error.code)) {
      throw new WalletError('The sign-in challenge expired before it was signed. Please sign in again (and sign within a few minutes).');
    }
    if (error instanceof ApiError && error.code === 'chain_not_allowed') {
      throw new WalletError(`Wrong network: chain ${chainId} is not accepted here. Switch your wallet's network and try again.`);
    }
    throw error;
  }
  return getSession();
}

export async function signOut() {
  try {
    if (getSession()) await api('/auth/logout', { method: 'POST' });
  } catch {
    // An already ended session is signed out all the same.
  }
  setSession(null);
}
