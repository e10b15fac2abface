// Drives the web UI of a running flowstate job in headless Chromium; run by
// crates/cli/tests/web_ui.rs, which starts the job and checks the files.
//
// Environment: FLOWSTATE_UI_URL (the page), FLOWSTATE_UI_TOKEN (the job's bearer
// token, or empty), FLOWSTATE_UI_TARGET (a savepoint directory the job allows),
// FLOWSTATE_UI_FORBIDDEN (one it does not), FLOWSTATE_UI_OUT (a directory for
// screenshots and the browser's profile), FLOWSTATE_CHROMIUM,
// FLOWSTATE_WEB_UI_NODE_MODULES (where playwright-core is installed).
//
// Steps, each waiting for what the page shows (no fixed sleeps): the token
// prompt, the graph with rates, the checkpoint table; a savepoint to a
// forbidden directory (the error shown), one to the target (the location shown,
// the savepoint in the table); a screenshot; then cancel from the page and the
// page's account of the ended job. Prints one JSON line with what it saw;
// exits non-zero with the reason on stderr when a step fails.
'use strict';

const path = require('path');
const fs = require('fs');

const env = (name) => {
  const v = process.env[name];
  if (v === undefined) throw new Error(`${name} is not set`);
  return v;
};

const { chromium } = require(path.join(env('FLOWSTATE_WEB_UI_NODE_MODULES'), 'playwright-core'));

// Generous: a debug build on a busy two-core machine.
const STEP_MS = 90_000;

async function main() {
  const url = env('FLOWSTATE_UI_URL');
  const token = process.env.FLOWSTATE_UI_TOKEN || '';
  const target = env('FLOWSTATE_UI_TARGET');
  const forbidden = env('FLOWSTATE_UI_FORBIDDEN');
  const out = env('FLOWSTATE_UI_OUT');
  const profile = path.join(out, 'chromium-profile');
  fs.mkdirSync(profile, { recursive: true });

  // A fresh profile directory (Playwright passes it as --user-data-dir).
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: env('FLOWSTATE_CHROMIUM'),
    headless: true,
    viewport: { width: 1440, height: 1000 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const seen = { pageErrors: [], steps: [] };
  const step = (name) => { seen.steps.push(name); process.stderr.write(`ui-test: ${name}\n`); };
  try {
    const page = await context.newPage();
    page.setDefaultTimeout(STEP_MS);
    page.on('pageerror', (e) => seen.pageErrors.push(String(e && e.stack ? e.stack : e)));
    page.on('console', (m) => { if (m.type() === 'error') process.stderr.write(`ui-test: console: ${m.text()}\n`); });
    // Only the page's own server is ever asked (no CDN, no network).
    const foreign = [];
    page.on('request', (r) => { if (!r.url().startsWith(new URL(url).origin)) foreign.push(r.url()); });

    step('load the page');
    const response = await page.goto(url);
    if (!response || response.status() !== 200) throw new Error(`GET ${url}: ${response && response.status()}`);
    const csp = response.headers()['content-security-policy'] || '';
    if (!csp.includes("script-src 'self'")) throw new Error(`no CSP on the page: ${csp}`);

    if (token) {
      step('the API asks for the token; enter it');
      await page.locator('#token-form').waitFor({ state: 'visible' });
      await page.fill('#token-input', token);
      await page.click('#token-form button[type="submit"]');
    }

    step('wait for the graph with rates');
    await page.waitForFunction(() => {
      const nodes = document.querySelectorAll('#graph svg .node');
      const rated = [...document.querySelectorAll('#graph svg .node .rate-out')].some((t) => /out [0-9]/.test(t.textContent));
      return nodes.length >= 2 && rated;
    }, null, { timeout: STEP_MS });
    seen.vertices = await page.locator('#graph svg .node').count();
    seen.edges = await page.locator('#graph svg path.edge').count();
    seen.state = await page.locator('#job-state').getAttribute('data-state');
    if (seen.state !== 'RUNNING') throw new Error(`job state shown: ${seen.state}`);

    step('wait for completed checkpoints in the table');
    await page.locator('#checkpoint-table tbody tr[data-status="COMPLETED"]').first().waitFor();
    await page.locator('#chart-duration svg rect').first().waitFor();
    seen.checkpointRows = await page.locator('#checkpoint-table tbody tr').count();
    seen.configRows = await page.locator('#config dt').count();

    step('a savepoint into a forbidden directory: the page shows the refusal');
    await page.fill('#target-dir', forbidden);
    await page.click('#btn-savepoint');
    await page.locator('#action-result[data-state="failed"]').waitFor();
    seen.refusal = (await page.locator('#action-result').textContent()).trim();
    await page.locator('#btn-savepoint:enabled').waitFor();

    step('a savepoint into the target directory');
    await page.fill('#target-dir', target);
    await page.click('#btn-savepoint');
    await page.locator('#action-result[data-state="completed"], #action-result[data-state="failed"]').waitFor();
    const outcome = await page.locator('#action-result').getAttribute('data-state');
    if (outcome !== 'completed') throw new Error(`the savepoint failed: ${await page.locator('#action-result').textContent()}`);
    seen.location = (await page.locator('#action-result code.location').textContent()).trim();

    step('the savepoint appears in the checkpoint table');
    await page.locator('#checkpoint-table tbody tr[data-status="COMPLETED"] .pill[data-tone="sp"]').first().waitFor();
    await page.screenshot({ path: path.join(out, 'web-ui.png'), fullPage: true });

    step('cancel from the page (two clicks)');
    await page.click('#btn-cancel');
    await page.locator('#btn-cancel.confirm').waitFor();
    await page.click('#btn-cancel');
    await page.locator('#action-result[data-state="completed"], #action-result[data-state="failed"]').waitFor();
    seen.cancel = (await page.locator('#action-result').textContent()).trim();
    if ((await page.locator('#action-result').getAttribute('data-state')) !== 'completed') throw new Error(`cancel: ${seen.cancel}`);

    step('the page shows the ended job (its final state, or that its process is gone)');
    await page.waitForFunction(() => {
      const s = document.getElementById('job-state').dataset.state;
      const banner = document.getElementById('banner');
      return s === 'CANCELED' || s === 'CANCELLED' || (!banner.hidden && /last known state/.test(banner.textContent));
    }, null, { timeout: STEP_MS });
    seen.ended = (await page.locator('#banner').textContent()).trim();
    // Either way, no action is offered on a job that has ended or is gone.
    for (const id of ['#btn-savepoint', '#btn-stop', '#btn-cancel']) {
      if (!(await page.locator(id).isDisabled())) throw new Error(`${id} is enabled on an ended job`);
    }
    await page.screenshot({ path: path.join(out, 'web-ui-ended.png'), fullPage: true });

    if (foreign.length) throw new Error(`the page asked other servers: ${foreign.join(', ')}`);
    if (seen.pageErrors.length) throw new Error(`script errors on the page: ${seen.pageErrors.join('\n')}`);
    process.stdout.write(JSON.stringify(seen) + '\n');
  } catch (error) {
    // What the page showed when the step failed, for the report.
    const page = context.pages()[0];
    if (page) {
      await page.screenshot({ path: path.join(out, 'failure.png'), fullPage: true }).catch(() => {});
      const shown = await page.evaluate(() => [...document.querySelectorAll('#conn-text, #banner, .error, #action-result')]
        .filter((e) => e.textContent.trim() && !e.hidden).map((e) => `${e.id || e.className}: ${e.textContent.trim()}`)).catch(() => []);
      error.message += `\nthe page showed:\n  ${shown.join('\n  ')}\n(screenshot: ${path.join(out, 'failure.png')})`;
    }
    throw error;
  } finally {
    await context.close();
  }
}

main().catch((e) => {
  process.stderr.write(`ui-test: FAILED: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
