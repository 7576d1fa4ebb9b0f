//! Headless Chromium for tests that look at web pages (the dashboard): load a URL, let its
//! scripts run, and get back the DOM as serialised HTML plus a PNG screenshot.
//!
//! Waiting uses Chromium's virtual time (`--virtual-time-budget`): the page's clock advances only
//! while no network request is pending, so when the budget is spent every fetch the page started
//! has completed and been drawn, however slow the server or the machine. A page that polls once a
//! second gets `budget / 1000` polls, which is deterministic. There is no skipping: a machine
//! without Chromium fails with a message saying how to install it.
//!
//! Also here: small readers for the serialised DOM ([`element_text`], [`start_tags`],
//! [`attribute`]), enough for tests to check ids and attributes without an HTML parser.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{ChildGuard, LocalError, Result};

/// Environment variable naming the Chromium binary, for machines where it is not `chromium`.
pub const CHROMIUM_ENV: &str = "NEUROSHARD_CHROMIUM";

/// A headless Chromium to run pages in; each call is a fresh browser with a throwaway profile.
#[derive(Debug, Clone)]
pub struct Chromium {
    binary: PathBuf,
    window: (u32, u32),
    virtual_time_budget_ms: u64,
    timeout: Duration,
}

impl Chromium {
    /// Finds Chromium: `$NEUROSHARD_CHROMIUM`, else `chromium` or `chromium-browser` on `PATH`.
    pub fn locate() -> Result<Self> {
        let binary = match std::env::var_os(CHROMIUM_ENV) {
            Some(path) => PathBuf::from(path),
            None => ["chromium", "chromium-browser"]
                .iter()
                .find_map(|name| find_on_path(name))
                .ok_or_else(|| {
                    format!(
                        "chromium not found on PATH: run scripts/setup-chromium.sh \
                         (Debian's chromium and chromium-driver) or set {CHROMIUM_ENV}"
                    )
                })?,
        };
        if !binary.is_file() {
            return Err(LocalError(format!(
                "chromium binary {} does not exist (from {CHROMIUM_ENV}?)",
                binary.display()
            )));
        }
        Ok(Self {
            binary,
            window: (1280, 900),
            virtual_time_budget_ms: 5_000,
            timeout: Duration::from_secs(90),
        })
    }

    /// The viewport, which is also the screenshot's size in pixels (default 1280 × 900).
    pub fn window_size(mut self, width: u32, height: u32) -> Self {
        self.window = (width, height);
        self
    }

    /// How much page time (timers, animations) passes before the DOM is taken (default 5 s).
    /// Time spent waiting for the network does not count against it.
    pub fn virtual_time_budget_ms(mut self, ms: u64) -> Self {
        self.virtual_time_budget_ms = ms;
        self
    }

    /// The real-time limit on one browser run, after which it is killed (default 90 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The binary this runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Loads `url`, lets its scripts run, and returns the DOM as HTML.
    pub fn dump_dom(&self, url: &str) -> Result<String> {
        self.run(url, None)
    }

    /// Like [`Chromium::dump_dom`], and also writes a PNG screenshot of the viewport to
    /// `screenshot` (taken in the same run, so it shows the same state as the DOM).
    pub fn render(&self, url: &str, screenshot: &Path) -> Result<String> {
        self.run(url, Some(screenshot))
    }

    fn run(&self, url: &str, screenshot: Option<&Path>) -> Result<String> {
        let profile = tempfile::Builder::new()
            .prefix("neuroshard-chromium-")
            .tempdir()
            .map_err(|e| format!("chromium profile dir: {e}"))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("--headless")
            // Root (CI) cannot use the sandbox; the pages are the project's own.
            .arg("--no-sandbox")
            .arg("--disable-gpu")
            // Containers often have a tiny /dev/shm; Chromium crashes when it fills.
            .arg("--disable-dev-shm-usage")
            // Nothing outside the test may be contacted (machines may be offline).
            .arg("--disable-background-networking")
            .arg("--no-first-run")
            .arg("--hide-scrollbars")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--window-size={},{}", self.window.0, self.window.1))
            .arg(format!(
                "--virtual-time-budget={}",
                self.virtual_time_budget_ms
            ))
            .arg("--dump-dom");
        if let Some(path) = screenshot {
            if path.exists() {
                std::fs::remove_file(path)
                    .map_err(|e| format!("remove old screenshot {}: {e}", path.display()))?;
            }
            command.arg(format!("--screenshot={}", path.display()));
        }
        command
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::spawn(command)?;
        // Both pipes are drained while the browser runs: a large DOM would otherwise fill the
        // pipe and stall it.
        let stdout = drain(child.0.stdout.take());
        let stderr = drain(child.0.stderr.take());
        let started = Instant::now();
        let status = loop {
            match child.0.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() > self.timeout => {
                    child.kill();
                    return Err(LocalError(format!(
                        "chromium on {url} still running after {:?}; killed",
                        self.timeout
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(LocalError(format!("waiting for chromium: {e}"))),
            }
        };
        let dom = join(stdout)?;
        let log = join(stderr)?;
        if !status.success() {
            return Err(LocalError(format!(
                "chromium on {url} exited with {status}: {}",
                tail(&log)
            )));
        }
        if let Some(path) = screenshot
            && !path.is_file()
        {
            return Err(LocalError(format!(
                "chromium wrote no screenshot to {}: {}",
                path.display(),
                tail(&log)
            )));
        }
        if dom.trim().is_empty() {
            return Err(LocalError(format!(
                "chromium dumped no DOM for {url}: {}",
                tail(&log)
            )));
        }
        Ok(dom)
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

type Drain = std::thread::JoinHandle<std::io::Result<String>>;

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Drain {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            pipe.read_to_end(&mut bytes)?;
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    })
}

fn join(handle: Drain) -> Result<String> {
    handle
        .join()
        .map_err(|_| LocalError("chromium output reader panicked".to_string()))?
        .map_err(|e| LocalError(format!("reading chromium output: {e}")))
}

/// The last lines of Chromium's log, for error messages (it is chatty about D-Bus).
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A `file://` URL for a local path (percent-encoding what a URL path may not hold).
pub fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for byte in path.to_string_lossy().bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            url.push(char::from(byte));
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    url
}

/// The text directly inside the element with `id`, up to its first child tag, with entities
/// decoded. `None` when no element has that id.
pub fn element_text(dom: &str, id: &str) -> Option<String> {
    let at = dom.find(&format!(" id=\"{id}\""))?;
    let rest = &dom[at..];
    let open_end = rest.find('>')? + 1;
    let text = &rest[open_end..];
    let end = text.find('<').unwrap_or(text.len());
    Some(decode_entities(&text[..end]))
}

/// Every start tag `<name …>` in the DOM, as its source text (attributes included).
pub fn start_tags<'a>(dom: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name}");
    let mut tags = Vec::new();
    let mut from = 0;
    while let Some(pos) = dom[from..].find(&open) {
        let start = from + pos;
        let after = start + open.len();
        // `<path` must not match `<pathology`: the name ends at whitespace, `>` or `/`.
        let boundary = dom[after..]
            .chars()
            .next()
            .is_some_and(|c| c.is_whitespace() || c == '>' || c == '/');
        let Some(len) = dom[start..].find('>') else {
            break;
        };
        if boundary {
            tags.push(&dom[start..=start + len]);
        }
        from = after;
    }
    tags
}

/// The value of attribute `name` in a start tag from [`start_tags`], entities decoded.
pub fn attribute(tag: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let mut from = 0;
    while let Some(pos) = tag[from..].find(&key) {
        let at = from + pos;
        // ` d="` must not match `id="`: the name starts after whitespace.
        if tag[..at].ends_with(char::is_whitespace) {
            let value = &tag[at + key.len()..];
            let end = value.find('"')?;
            return Some(decode_entities(&value[..end]));
        }
        from = at + key.len();
    }
    None
}

/// Undoes the escapes Chromium's serialiser writes (`&amp;` last, so `&amp;lt;` stays `&lt;`).
fn decode_entities(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

    #[test]
    fn runs_the_page_script_and_takes_a_real_screenshot() {
        let dir = tempfile::tempdir().unwrap();
        let page = dir.path().join("page with space.html");
        // The text appears only after a timer and a second script step, so a dump taken
        // before scripts ran (or before the timer fired) would fail the test.
        std::fs::write(
            &page,
            r##"<!doctype html><html><body style="margin:0;background:#123456">
<p id="out">waiting</p>
<svg width="300" height="200"><circle cx="150" cy="100" r="80" fill="#f0a"/></svg>
<script>
setTimeout(() => {
  const p = document.getElementById("out");
  p.textContent = "written by script <ok> & " + (6 * 7);
  p.dataset.done = "yes";
}, 700);
</script></body></html>"##,
        )
        .unwrap();
        let shot = dir.path().join("shot.png");
        let chromium = Chromium::locate().unwrap().window_size(400, 300);
        let dom = chromium.render(&file_url(&page), &shot).unwrap();

        assert_eq!(
            element_text(&dom, "out").as_deref(),
            Some("written by script <ok> & 42"),
            "{dom}"
        );
        let p = start_tags(&dom, "p");
        assert_eq!(p.len(), 1);
        assert_eq!(attribute(p[0], "data-done").as_deref(), Some("yes"));
        assert_eq!(attribute(p[0], "id").as_deref(), Some("out"));

        let png = std::fs::read(&shot).unwrap();
        assert!(png.starts_with(PNG_MAGIC), "not a PNG");
        assert!(
            png.len() > 1_000,
            "suspiciously small PNG: {} bytes",
            png.len()
        );
        // IHDR follows the magic: width and height, big-endian, are the window size.
        let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert_eq!((width, height), (400, 300));
    }

    #[test]
    fn a_missing_binary_is_a_clear_error() {
        let err = Chromium {
            binary: PathBuf::from("/nonexistent/chromium"),
            window: (10, 10),
            virtual_time_budget_ms: 10,
            timeout: Duration::from_secs(5),
        }
        .dump_dom("about:blank")
        .unwrap_err();
        assert!(err.0.contains("/nonexistent/chromium"), "{err}");
    }

    #[test]
    fn dom_readers_respect_name_boundaries_and_entities() {
        let dom = r#"<svg><pathology d="no"></pathology><path id="p" class="series" data-d="x" d="M0,0L1,1"></path><path d=""/></svg><b id="t">a &amp;lt; b<i>x</i></b>"#;
        let paths = start_tags(dom, "path");
        assert_eq!(paths.len(), 2);
        assert_eq!(attribute(paths[0], "d").as_deref(), Some("M0,0L1,1"));
        assert_eq!(attribute(paths[0], "class").as_deref(), Some("series"));
        assert_eq!(attribute(paths[1], "d").as_deref(), Some(""));
        assert_eq!(attribute(paths[1], "class"), None);
        assert_eq!(element_text(dom, "t").as_deref(), Some("a &lt; b"));
        assert_eq!(element_text(dom, "missing"), None);
        assert_eq!(
            file_url(Path::new("/tmp/a b#c.html")),
            "file:///tmp/a%20b%23c.html"
        );
    }
}
