// Open an HTML preview in headless Chromium and report what a person would see, as JSON:
// console errors, page errors, every request (URL scheme), the 3D viewer's state, the video's
// decoding state, and screenshots of the viewer canvas and the video.
//   node preview_check.mjs PAGE.html OUT_DIR [CHROMIUM]
// Run it inside `unshare -n` (no network at all). Exit 0 when a report was written.
import { chromium } from "playwright-core";
import { mkdirSync, writeFileSync } from "node:fs";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [page_path, out_dir, exe = "/usr/bin/chromium"] = process.argv.slice(2);
mkdirSync(out_dir, { recursive: true });
const userDataDir = resolve(out_dir, "profile");
const report = { console: [], pageErrors: [], requests: [], failedRequests: [] };

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: exe,
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: ["--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
         "--disable-background-networking", "--disable-component-update", "--no-first-run",
         "--disable-default-apps", "--disable-sync", "--autoplay-policy=no-user-gesture-required"],
});
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => report.console.push({ type: m.type(), text: m.text() }));
  page.on("pageerror", (e) => report.pageErrors.push(String(e)));
  page.on("request", (r) => report.requests.push(r.url().slice(0, 120)));
  page.on("requestfailed", (r) => report.failedRequests.push({ url: r.url().slice(0, 120), error: r.failure()?.errorText }));
  const url = pathToFileURL(resolve(page_path)).href;
  await page.goto(url, { waitUntil: "load", timeout: 60000 });
  report.url = url;
  try {
    await page.waitForFunction(() => window.__dreamfusionViewer && (window.__dreamfusionViewer.ready || window.__dreamfusionViewer.error),
                               null, { timeout: 60000 });
  } catch (e) { report.viewerTimeout = String(e); }
  report.viewer = await page.evaluate(() => {
    const s = window.__dreamfusionViewer;
    return s ? { ready: s.ready, error: s.error || null, triangles: s.triangles, vertices: s.vertices } : null;
  });
  if (await page.$("video#turntable")) {
    // The state when the first frame is decoded (a short looping video seeks back to its start,
    // briefly dropping readyState, so it is read at this moment), then whether playback goes on.
    try {
      const handle = await page.waitForFunction(() => {
        const v = document.getElementById("turntable");
        if (v.error) return { error: v.error.code, readyState: v.readyState };
        if (v.readyState < 2) return false;
        return { readyState: v.readyState, width: v.videoWidth, height: v.videoHeight, duration: v.duration, error: null };
      }, null, { timeout: 60000, polling: 50 });
      report.video = await handle.jsonValue();
    } catch (e) { report.videoTimeout = String(e); }
    report.playback = await page.evaluate(async () => {
      const v = document.getElementById("turntable");
      const q0 = v.getVideoPlaybackQuality().totalVideoFrames;
      await new Promise((ok) => setTimeout(ok, 1500));
      return { paused: v.paused, decodedFrames: v.getVideoPlaybackQuality().totalVideoFrames, advanced:
               v.getVideoPlaybackQuality().totalVideoFrames > q0 };
    });
  }
  const canvas = await page.$("canvas#viewer");
  if (canvas) await canvas.screenshot({ path: resolve(out_dir, "viewer.png") });
  const video = await page.$("video#turntable");
  if (video) await video.screenshot({ path: resolve(out_dir, "video.png") });
  await page.screenshot({ path: resolve(out_dir, "page.png"), fullPage: true });
} finally {
  await context.close();
}
writeFileSync(resolve(out_dir, "report.json"), JSON.stringify(report, null, 2));
console.log(JSON.stringify(report));
