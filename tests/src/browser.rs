//! A real browser for the dashboard's end-to-end tests: headless Chromium driven
//! through `chromedriver` by a small synchronous client of the W3C WebDriver protocol
//! over `ureq`.
//!
//! [`Browser::start`] runs `chromedriver` on a free loopback port (in its own process
//! group, killed with the browser it started when the [`Browser`] is dropped) and opens
//! one session. Interactions go through WebDriver's element commands, so a click or a
//! key press is a real input event; reads go through one script each
//! (`document.querySelector`), which answers in one round trip and never meets a stale
//! element however often the page re-renders. Everything that waits takes a deadline:
//! [`Browser::wait`] polls, and on timeout its panic shows what the page said.
//!
//! `CHROMEDRIVER` and `CHROMIUM` override the two binaries (default `chromedriver` on
//! the `PATH` and `/usr/bin/chromium`, Debian's `chromium-driver` and `chromium`).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// The key under which WebDriver names an element in its answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver error: its `error` code (`no such element`, `stale element
/// reference`, ...) and message, or a transport failure (`error` = `transport`).
#[derive(Debug, Clone)]
pub struct WebDriverError {
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error, self.message)
    }
}

/// One headless Chromium session and the `chromedriver` serving it.
pub struct Browser {
    /// `http://127.0.0.1:PORT/session/ID`
    session: String,
    agent: ureq::Agent,
    /// Dropped after [`Browser`]'s own `drop` has closed the session.
    _driver: Driver,
}

impl Browser {
    /// Starts `chromedriver`, waits until its `/status` says ready, and opens a session
    /// with a headless Chromium of 1280×1000.
    pub fn start() -> Browser {
        let agent = ureq::AgentBuilder::new()
            // Page loads and session creation can be slow on a busy machine.
            .timeout(Duration::from_secs(60))
            .build();
        let bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        // The free port may be taken between the check and chromedriver's bind: retry.
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = crate::free_port();
            let driver = Command::new(&bin)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own group, so that Drop takes the browser processes down with it.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start {bin}: {e} (scripts/setup.sh installs chromium-driver)")
                });
            let mut driver = Driver(Some(driver));
            let base = format!("http://127.0.0.1:{port}");
            match wait_ready(&agent, &base, driver.0.as_mut().expect("running")) {
                Ok(()) => {
                    let session = new_session(&agent, &base);
                    return Browser {
                        session: format!("{base}/session/{session}"),
                        agent,
                        _driver: driver,
                    };
                }
                Err(e) => last_error = e,
            }
        }
        panic!("chromedriver did not start: {last_error}");
    }

    /// One WebDriver command on this session: `path` is relative to the session
    /// (`""` for the session itself); the answer's `value`.
    pub fn command(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        call(
            &self.agent,
            method,
            &format!("{}{path}", self.session),
            body,
        )
    }

    /// Navigates to `url` and waits for its `load` event.
    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })))
            .unwrap_or_else(|e| panic!("navigating to {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page and
    /// returns what it returns.
    pub fn try_script(&self, script: &str, args: &[Value]) -> Result<Value, WebDriverError> {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// [`Browser::try_script`], panicking on an error.
    pub fn script(&self, script: &str, args: &[Value]) -> Value {
        self.try_script(script, args)
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// The rendered text (`innerText`) of the first element matching `css`, if any.
    pub fn text(&self, css: &str) -> Option<String> {
        self.script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
            &[json!(css)],
        )
        .as_str()
        .map(str::to_string)
    }

    /// An attribute of the first element matching `css`, if both exist.
    pub fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.script(
            "const e = document.querySelector(arguments[0]); \
             return e ? e.getAttribute(arguments[1]) : null;",
            &[json!(css), json!(name)],
        )
        .as_str()
        .map(str::to_string)
    }

    /// How many elements match `css`.
    pub fn count(&self, css: &str) -> usize {
        self.script(
            "return document.querySelectorAll(arguments[0]).length;",
            &[json!(css)],
        )
        .as_u64()
        .unwrap_or(0) as usize
    }

    /// The values of attribute `name` of every element matching `css`, in document order.
    pub fn attrs(&self, css: &str, name: &str) -> Vec<String> {
        let v = self.script(
            "return Array.from(document.querySelectorAll(arguments[0]), \
             e => e.getAttribute(arguments[1]));",
            &[json!(css), json!(name)],
        );
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    }

    /// The WebDriver id of the first element matching `css`.
    pub fn find(&self, css: &str) -> Result<String, WebDriverError> {
        let v = self.command(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        )?;
        v[ELEMENT]
            .as_str()
            .map(str::to_string)
            .ok_or(WebDriverError {
                error: "bad answer".into(),
                message: v.to_string(),
            })
    }

    /// Does `action` on the element matching `css`, finding it again while it is
    /// missing, re-rendered (stale) or not yet interactable, for up to 5 s.
    #[track_caller]
    fn on_element(
        &self,
        css: &str,
        what: &str,
        action: impl Fn(&str) -> Result<(), WebDriverError>,
    ) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.find(css).and_then(|id| action(&id)) {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline && e.error != "transport" => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("{what} {css}: {e}"),
            }
        }
    }

    /// Clicks the element matching `css` (scrolled into view, as a user would).
    #[track_caller]
    pub fn click(&self, css: &str) {
        self.on_element(css, "clicking", |id| {
            self.command("POST", &format!("/element/{id}/click"), Some(json!({})))
                .map(drop)
        });
    }

    /// Replaces the value of the input matching `css` by typing `text` into it.
    #[track_caller]
    pub fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "typing into", |id| {
            self.command("POST", &format!("/element/{id}/clear"), Some(json!({})))?;
            self.command(
                "POST",
                &format!("/element/{id}/value"),
                Some(json!({ "text": text })),
            )
            .map(drop)
        });
    }

    /// Chooses the option of value `value` in the `<select>` matching `css` by clicking it.
    #[track_caller]
    pub fn select(&self, css: &str, value: &str) {
        self.click(&format!("{css} option[value=\"{value}\"]"));
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        let v = self
            .command("GET", "/screenshot", None)
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 text"))
            .expect("a base64 PNG")
    }

    /// A PNG of the whole page: the window is made as tall as the page (at most
    /// 4000 px) for the shot, then put back.
    pub fn screenshot_full_page(&self) -> Vec<u8> {
        let rect = self
            .command("GET", "/window/rect", None)
            .unwrap_or_else(|e| panic!("window rect: {e}"));
        let height = self
            .script(
                "return Math.ceil(document.documentElement.scrollHeight \
                 + window.outerHeight - window.innerHeight);",
                &[],
            )
            .as_f64()
            .unwrap_or(1000.0)
            .min(4000.0);
        let resize = |h: f64| {
            let _ = self.command(
                "POST",
                "/window/rect",
                Some(json!({ "width": rect["width"], "height": h })),
            );
        };
        resize(height);
        let png = self.screenshot();
        resize(rect["height"].as_f64().unwrap_or(1000.0));
        png
    }

    /// Polls `check` every 25 ms until it returns `Some`, or panics after `timeout`
    /// naming `what` and showing the start of the page's text.
    #[track_caller]
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Browser) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check(self) {
                return v;
            }
            if Instant::now() >= deadline {
                let page = self
                    .try_script("return document.body ? document.body.innerText : '';", &[])
                    .ok()
                    .and_then(|v| v.as_str().map(|s| s.chars().take(3000).collect::<String>()))
                    .unwrap_or_default();
                panic!("timed out after {timeout:?} waiting for {what}; the page says:\n{page}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing the session ends Chromium cleanly; killing the group ends the rest.
        let _ = self.command("DELETE", "", None);
    }
}

/// The `chromedriver` child; dropping it kills its process group.
struct Driver(Option<Child>);

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits up to 10 s for chromedriver's `/status` to say ready; `Err` when it exited.
fn wait_ready(agent: &ureq::Agent, base: &str, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("it exited with {status}"));
        }
        if let Ok(v) = call(agent, "GET", &format!("{base}/status"), None) {
            if v["ready"] == true {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("its /status did not say ready within 10 s".into())
}

/// Opens a session of headless Chromium; its id.
fn new_session(agent: &ureq::Agent, base: &str) -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let capabilities = json!({
        "capabilities": {
            "alwaysMatch": {
                "browserName": "chrome",
                "pageLoadStrategy": "normal",
                // A confirm() before an action is answered yes, as a user would.
                "unhandledPromptBehavior": "accept",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": [
                        "--headless=new",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--window-size=1280,1000",
                    ],
                },
            },
        },
    });
    let v = call(
        agent,
        "POST",
        &format!("{base}/session"),
        Some(capabilities),
    )
    .unwrap_or_else(|e| panic!("cannot open a Chromium session ({chromium}): {e}"));
    v["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no sessionId in {v}"))
        .to_string()
}

/// One WebDriver request: the answer's `value`, or its error.
fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<Value>,
) -> Result<Value, WebDriverError> {
    let req = agent.request(method, url);
    let res = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    let res = match res {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => {
            return Err(WebDriverError {
                error: "transport".into(),
                message: e.to_string(),
            })
        }
    };
    let v: Value = res.into_json().map_err(|e| WebDriverError {
        error: "transport".into(),
        message: format!("not JSON: {e}"),
    })?;
    let value = v.get("value").cloned().unwrap_or(Value::Null);
    match value.get("error").and_then(Value::as_str) {
        Some(error) => Err(WebDriverError {
            error: error.to_string(),
            message: value["message"].as_str().unwrap_or_default().to_string(),
        }),
        None => Ok(value),
    }
}
