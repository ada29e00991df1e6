// The operator page: the admin token is entered once per tab (sessionStorage). Jobs with live
// progress, cancel and retry; firing alerts; health; the audit log.

import { api, getAdminToken, query, setAdminToken } from './api.js';
import { field, h, notice, page, when } from './ui.js';

const REFRESH_MS = 2000;

function table(caption, headings, rows) {
  // Focusable, so a keyboard can scroll a table wider than a phone's screen.
  return h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': caption }, h('table', {},
    h('caption', {}, caption),
    h('thead', {}, h('tr', {}, headings.map((text) => h('th', { scope: 'col' }, text)))),
    h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: headings.length }, 'None')))));
}

function tokenForm() {
  const [tokenField, input] = field('Admin token', { type: 'password', name: 'admin_token', autocomplete: 'off', required: true,
    'data-hint': 'The auth.admin_token the server was started with; kept for this tab only.' });
  page('Operator', h('form', { class: 'admin-token', onsubmit: (event) => {
    event.preventDefault();
    setAdminToken(input.value.trim());
    show();
  } }, tokenField, h('button', { type: 'submit', class: 'primary' }, 'Continue')));
}

export async function show() {
  if (!getAdminToken()) {
    tokenForm();
    return undefined;
  }
  const health = h('section', { 'aria-labelledby': 'h-health' }, h('h2', { id: 'h-health' }, 'Health'));
  const alerts = h('section', { 'aria-labelledby': 'h-alerts' }, h('h2', { id: 'h-alerts' }, 'Firing alerts'));
  const stateFilter = h('select', { id: 'job-state' }, ['', 'queued', 'running', 'succeeded', 'failed', 'cancelled'].map((s) => h('option', { value: s }, s || 'any')));
  const jobs = h('section', { 'aria-labelledby': 'h-jobs' }, h('h2', { id: 'h-jobs' }, 'Jobs'),
    h('div', { class: 'field inline' }, h('label', { for: 'job-state' }, 'State'), stateFilter), h('div', { class: 'jobs-body' }));
  const audit = h('section', { 'aria-labelledby': 'h-audit' }, h('h2', { id: 'h-audit' }, 'Audit log'), h('div', { class: 'audit-body' }));
  const problem = h('div', { role: 'alert' });
  const forget = h('button', { type: 'button', onclick: () => { setAdminToken(''); show(); } }, 'Forget admin token');
  page('Operator', problem, h('div', { class: 'row' }, forget), health, alerts, jobs, audit);

  async function act(action) {
    try {
      await action();
      await refresh();
    } catch (error) {
      problem.replaceChildren(notice(error.message, 'error'));
    }
  }

  function jobRow(job) {
    const buttons = [];
    if (job.state === 'queued' || job.state === 'running') {
      buttons.push(h('button', { type: 'button', 'data-key': `${job.id}:cancel`, onclick: () => act(() => api(`/jobs/${job.id}/cancel`, { method: 'POST', auth: 'admin' })) }, 'Cancel'));
    }
    if ((job.state === 'failed' || job.state === 'cancelled') && job.media_id) {
      buttons.push(h('button', { type: 'button', 'data-key': `${job.id}:retry`, onclick: () => act(() => api('/jobs', { method: 'POST', auth: 'admin',
        body: { kind: job.kind, media_id: job.media_id, profiles: job.profiles.length ? job.profiles : null } })) }, 'Retry'));
    }
    return h('tr', {},
      h('td', {}, job.kind),
      h('td', {}, job.media_id ? h('a', { href: `/watch/${job.media_id}` }, job.media_id.slice(0, 8)) : '—'),
      h('td', {}, job.state, job.last_error ? h('div', { class: 'hint' }, job.last_error) : null),
      h('td', {}, h('progress', { max: 100, value: job.progress, 'aria-label': `Progress of job ${job.id.slice(0, 8)}` }), ` ${job.progress}%`),
      h('td', {}, when(job.created_at)),
      h('td', {}, buttons));
  }

  async function refresh() {
    const [healthResult, alertsResult, jobsResult, auditResult] = await Promise.allSettled([
      api('//health', { auth: false, accept: [503] }),
      api('/monitor/alerts?limit=20', { auth: false }),
      api(`/jobs${query({ state: stateFilter.value, limit: 50 })}`, { auth: 'admin' }),
      api('/audit?limit=50', { auth: 'admin' }),
    ]);
    const failed = [jobsResult, auditResult].find((r) => r.status === 'rejected');
    if (failed && failed.reason.status === 401) {
      setAdminToken('');
      tokenForm();
      document.getElementById('main').prepend(notice('The admin token was refused. Enter it again.', 'error'));
      return false;
    }
    if (healthResult.status === 'fulfilled') {
      const report = healthResult.value;
      health.replaceChildren(health.firstChild, h('p', {}, `Overall: ${report.status}`),
        table('Checks', ['Check', 'Status', 'Detail'], Object.entries(report.checks || {}).map(([name, check]) =>
          h('tr', {}, h('td', {}, name), h('td', {}, check.status), h('td', {}, check.detail || '')))));
    }
    if (alertsResult.status === 'fulfilled') {
      const firing = alertsResult.value.firing || [];
      alerts.replaceChildren(alerts.firstChild, table('Firing alerts', ['Rule', 'Level', 'Value', 'Since', 'Summary'], firing.map((rule) =>
        h('tr', {}, h('td', {}, rule.name), h('td', {}, rule.level), h('td', {}, String(rule.value ?? '')), h('td', {}, when(rule.active_since)), h('td', {}, rule.summary)))));
    }
    if (jobsResult.status === 'fulfilled') {
      // The table is rebuilt every refresh: a keyboard user's focus stays on the same button.
      const focused = document.activeElement?.dataset?.key;
      jobs.querySelector('.jobs-body').replaceChildren(table('Jobs, oldest first', ['Kind', 'Media', 'State', 'Progress', 'Created', 'Actions'], jobsResult.value.items.map(jobRow)));
      if (focused) jobs.querySelector(`[data-key="${focused}"]`)?.focus();
    }
    if (auditResult.status === 'fulfilled') {
      audit.querySelector('.audit-body').replaceChildren(table('Audit entries, oldest first', ['When', 'Action', 'Actor', 'Target', 'Outcome'], auditResult.value.items.map((entry) =>
        h('tr', {}, h('td', {}, when(entry.at)), h('td', {}, entry.action), h('td', {}, entry.actor), h('td', {}, entry.target || ''), h('td', {}, entry.outcome)))));
    }
    return true;
  }

  stateFilter.addEventListener('change', refresh);
  let timer = null;
  let active = true;
  const loop = async () => {
    if (!active) return;
    const ok = await refresh();
    if (ok && active) timer = setTimeout(loop, REFRESH_MS);
  };
  await loop();
  return () => { active = false; clearTimeout(timer); };
}
