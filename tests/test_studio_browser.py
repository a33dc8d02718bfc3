"""The studio in a real browser: JupyterLab on loopback, the studio notebook opened in Chromium through Playwright,
run through the Run menu, a prompt typed, Generate clicked with a tiny model folder, the <video> awaited, the saved
mp4 and its sidecar checked, and the bad-input messages (frames out of range, no image on the image tab) checked in
the page with no file written.

Needs Debian's chromium and the Python playwright package (no `playwright install`: the system browser is used):
    apt-get install -y chromium
    pip install playwright
Skipped with the reason when either is missing. The screenshot goes to $EASYANIMATE_TEST_ARTIFACTS (default: the
test's tmp folder); its path is printed."""
import json, os, secrets, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest
from easyanimate.testing import make_tiny_model_folder
from easyanimate.video_io import video_info

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing: apt-get install -y chromium")]
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing: pip install playwright")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "A JupyterLab server on loopback over a temp folder holding a copy of nbs/studio.ipynb; no user state involved."
    tmp = tmp_path_factory.mktemp("lab")
    root, out, state = tmp / "root", tmp / "out", tmp / "state"
    root.mkdir(); shutil.copy(ROOT / "nbs" / "studio.ipynb", root / "studio.ipynb")
    model = make_tiny_model_folder(tmp / "models" / "tiny-t2v")
    settings = state / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(state / "config"), "JUPYTER_DATA_DIR": str(state / "data"),
           "JUPYTER_RUNTIME_DIR": str(state / "runtime"), "IPYTHONDIR": str(state / "ipython"),
           "JUPYTERLAB_SETTINGS_DIR": str(state / "lab-settings"), "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"),
           "EASYANIMATE_STUDIO_MODELS": f"tiny={model}", "EASYANIMATE_STUDIO_ROOT": str(root),
           "EASYANIMATE_STUDIO_OUTPUT": str(out), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = open(tmp / "jupyterlab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                             f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
                             f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
                             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--allow-root"],
                            env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            if proc.poll() is not None: break
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2); break
            except OSError: time.sleep(0.5)
        else: pytest.fail(f"JupyterLab did not answer in 60 s; log: {tmp / 'jupyterlab.log'}")
        if proc.poll() is not None: pytest.fail(f"JupyterLab exited:\n{(tmp / 'jupyterlab.log').read_text()[-3000:]}")
        yield dict(url=url, token=token, out=out, log=tmp / "jupyterlab.log", tmp=tmp)
    finally:
        proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        log.close()


def files(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*") if p.is_file()) if out.is_dir() else []


def test_studio_in_chromium(lab):
    expect = sync_api.expect
    artifacts = Path(os.environ.get("EASYANIMATE_TEST_ARTIFACTS") or lab["tmp"]); artifacts.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        try:
            # 1. open the notebook and run it through the Run menu
            page.goto(f"{lab['url']}/lab/tree/studio.ipynb?token={lab['token']}")
            page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
            # the kernel must be up before Run All: on a busy machine an early click is dropped
            page.locator("#jp-main-statusbar").get_by_text("Idle").first.wait_for(timeout=120_000)
            studio = page.locator(".ea-studio")
            for attempt in range(3):
                page.locator(".jp-Notebook .jp-Cell").first.click()
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                page.locator(".lm-Menu-itemLabel").filter(has_text="Run All Cells").first.click()
                try:
                    studio.wait_for(timeout=60_000); break
                except sync_api.TimeoutError:
                    if attempt == 2: raise
                    print(f"Run All Cells attempt {attempt + 1}: no studio after 60 s, running again")
                    page.keyboard.press("Escape")
            # 2. fill the form: the tiny model is listed first, a prompt, few frames and steps, a small size
            expect(page.locator(".ea-model select")).to_have_value("tiny")  # the name given in EASYANIMATE_STUDIO_MODELS
            page.locator(".ea-prompt textarea").fill("a red ball rolls over the grass")
            def set_number(cls, value):
                box = page.locator(f".{cls} input"); box.fill(str(value)); box.press("Enter")
            for cls, value in [("ea-frames", 5), ("ea-steps", 2), ("ea-height", 64), ("ea-width", 64), ("ea-seed", 7)]:
                set_number(cls, value)
            status, generate = page.locator(".ea-status"), page.locator(".ea-generate")
            # 3. bad input: frames out of range -> a message, no file
            set_number("ea-frames", 60)
            generate.click()
            expect(status).to_contain_text("Frames must be from 1 to 49; got 60", timeout=20_000)
            set_number("ea-frames", 5)
            # 4. bad input: the image tab without an image -> a message, no file
            page.locator(".ea-tabs .lm-TabBar-tab").filter(has_text="Image to video").click()
            generate.click()
            expect(status).to_contain_text("No start image", timeout=20_000)
            assert files(lab["out"]) == []
            page.locator(".ea-tabs .lm-TabBar-tab").filter(has_text="Text to video").click()
            # 5. generate: the progress bar, then the video in the page
            generate.click()
            page.locator(".ea-result video").wait_for(timeout=120_000)
            expect(status).to_contain_text("Saved")
            shot = artifacts / "studio.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"studio screenshot: {shot}")
        except Exception:
            page.screenshot(path=str(artifacts / "studio-failure.png"), full_page=True)
            print(f"failure screenshot: {artifacts / 'studio-failure.png'}; JupyterLab log: {lab['log']}")
            raise
        finally:
            browser.close()
    # 6. the saved mp4 (5 frames, 64x64) and its sidecar with the run's parameters
    mp4s, sidecars = list(lab["out"].glob("*.mp4")), list(lab["out"].glob("*.json"))
    assert len(mp4s) == 1 and len(sidecars) == 1 and sidecars[0].stem == mp4s[0].stem
    info = video_info(mp4s[0])
    assert (info["frames"], info["height"], info["width"]) == (5, 64, 64)
    rec = json.loads(sidecars[0].read_text())
    s = rec["settings"]
    assert (s["prompt"], s["frames"], s["steps"], s["seed"], s["tab"]) == ("a red ball rolls over the grass", 5, 2, 7, "t2v")
    assert rec["papermill"].startswith("papermill ") and "-p seed 7" in rec["papermill"]
