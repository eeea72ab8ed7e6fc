//! `GET /`: the status page. One HTML document with its style and script
//! inline (nothing else to fetch: it works where only the metrics port is
//! reachable), readable as served (no script needed), and refreshed by its
//! script, which fetches the page again every few seconds and swaps the
//! content in. Rendered from what the endpoints gather for one request: the
//! lists are one page of hosts each, so a request costs what it shows.
//!
//! Everything that comes from outside (names and labels from the
//! operator's CSV, group names) goes through [`esc`].

use std::{
    fmt::Write as _,
    time::{Duration, SystemTime},
};

use super::missing::MissingHost;
use crate::track::{
    events::{Summary, host_id, timestamp},
    recent::Recent,
    silent::{OwnedLabels, SilentPage},
};

/// Rows of each list on a page by default.
pub const PAGE_ROWS: usize = 50;

/// Seconds between two refreshes by the script.
const REFRESH_SECS: u32 = 5;

/// A group's counts.
pub struct GroupRow<'a> {
    pub group: &'a str,
    /// Heard (alive or silent).
    pub hosts: u64,
    pub alive: u64,
    pub silent: u64,
    pub missing: u64,
}

/// What one page shows.
pub struct Status<'a> {
    pub ingest: &'a str,
    pub timeout: Duration,
    pub sweep: Duration,
    pub summary: &'a Summary,
    /// The collector has an inventory: missing and unknown hosts count.
    pub inventory: bool,
    pub missing: u64,
    pub unknown: u64,
    pub ignored: u64,
    pub table_used: usize,
    pub table_capacity: usize,
    pub last_sweep: Option<SystemTime>,
    pub groups: Vec<GroupRow<'a>>,
    /// The page of silent hosts, longest silent first.
    pub silent: &'a SilentPage,
    /// The same page of missing hosts, longest missing first.
    pub missing_hosts: &'a [MissingHost],
    pub recent: &'a Recent,
    pub offset: usize,
    pub limit: usize,
    /// When the page was made.
    pub now: SystemTime,
}

/// `s` as HTML text or attribute value.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `12s`, `3m 4s`, `2h 0m`: to the second, the two largest units.
fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

fn labels(l: Option<&OwnedLabels>) -> String {
    l.map(|l| {
        l.0.iter()
            .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
            .collect::<Vec<_>>()
            .join(", ")
    })
    .unwrap_or_default()
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222}\
h1{font-size:1.4em;margin:0}h2{font-size:1.1em;margin:1.2em 0 .3em}\
table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #ddd}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.meta{color:#666}\
.silent,.missing{color:#b00}.recovered{color:#070}nav a{margin-right:1em}";

/// Fetches the page again every few seconds and swaps `#page` for the new
/// one's; on a failure the page stays as it was (and says so).
const SCRIPT: &str = "(function(){var n=0;\
function swap(){fetch(location.href,{cache:'no-store'}).then(function(r){\
if(!r.ok)throw new Error(r.status);return r.text();}).then(function(t){\
var d=new DOMParser().parseFromString(t,'text/html');var p=d.getElementById('page');\
if(p){n++;p.setAttribute('data-refreshes',n);document.getElementById('page').replaceWith(p);}\
}).catch(function(e){var s=document.getElementById('stale');\
if(s)s.textContent='refresh failed ('+e.message+'): showing an older page';});}\
setInterval(swap,REFRESH);})();";

/// The whole document.
pub fn render(st: &Status<'_>) -> String {
    let mut o = String::with_capacity(8192);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>hb status</title><style>{STYLE}</style></head><body>\n"
    );
    let _ = write!(
        o,
        "<main id=\"page\" data-generated=\"{}\">",
        st.now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    );
    let _ = writeln!(
        o,
        "<h1>hb {}</h1><p class=\"meta\">page made at <span id=\"now\">{}</span>; \
         refreshed every {REFRESH_SECS} s with JavaScript, reload it without. \
         <span id=\"stale\"></span></p>",
        env!("CARGO_PKG_VERSION"),
        timestamp(st.now),
    );
    fleet(&mut o, st);
    groups(&mut o, st);
    silent(&mut o, st);
    missing(&mut o, st);
    recent(&mut o, st);
    o.push_str("</main>\n<script>");
    o.push_str(&SCRIPT.replace("REFRESH", &(REFRESH_SECS * 1000).to_string()));
    o.push_str("</script>\n</body></html>\n");
    o
}

fn row(o: &mut String, id: &str, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        o,
        "<tr><th>{label}</th><td class=\"n\" id=\"{id}\">{value}</td></tr>"
    );
}

fn fleet(o: &mut String, st: &Status<'_>) {
    let s = st.summary;
    o.push_str("<section id=\"fleet\"><h2>Fleet</h2><table>\n");
    row(o, "hosts", "hosts", s.hosts);
    row(o, "alive", "alive", s.alive);
    row(o, "silent", "silent", s.silent);
    if st.inventory {
        row(o, "missing", "missing", st.missing);
        row(o, "unknown", "unknown (not in the inventory)", st.unknown);
    }
    if st.ignored > 0 {
        row(o, "ignored", "ignored (counted only)", st.ignored);
    }
    let fill = if st.table_capacity == 0 {
        0.0
    } else {
        st.table_used as f64 * 100.0 / st.table_capacity as f64
    };
    row(
        o,
        "table",
        "table",
        format!(
            "{} of {} slots ({fill:.1}%)",
            st.table_used, st.table_capacity
        ),
    );
    row(o, "ingest", "ingest", esc(st.ingest));
    row(o, "timeout", "timeout", format!("{:?}", st.timeout));
    row(o, "period", "sweep period", format!("{:?}", st.sweep));
    let last = match st.last_sweep {
        Some(at) => format!(
            "{} (took {:.1} ms)",
            timestamp(at),
            s.sweep.as_secs_f64() * 1e3
        ),
        None => "none yet".to_owned(),
    };
    row(o, "last-sweep", "last sweep", last);
    o.push_str("</table></section>\n");
}

fn groups(o: &mut String, st: &Status<'_>) {
    if st.groups.is_empty() {
        return;
    }
    o.push_str(
        "<section id=\"groups\"><h2>Groups</h2><table>\
         <tr><th>group</th><th>heard</th><th>alive</th><th>silent</th><th>missing</th></tr>\n",
    );
    for g in &st.groups {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(g.group),
            g.hosts,
            g.alive,
            g.silent,
            g.missing
        );
    }
    o.push_str("</table></section>\n");
}

/// Links to the pages before and after this one (of lists `total` long).
fn nav(o: &mut String, st: &Status<'_>, total: usize) {
    let (offset, limit) = (st.offset, st.limit);
    let mut links = Vec::new();
    if offset > 0 {
        links.push(format!(
            "<a rel=\"prev\" href=\"/?offset={}&amp;limit={limit}\">previous {limit}</a>",
            offset.saturating_sub(limit)
        ));
    }
    if offset.saturating_add(limit) < total {
        links.push(format!(
            "<a rel=\"next\" href=\"/?offset={}&amp;limit={limit}\">next {limit}</a>",
            offset + limit
        ));
    }
    if !links.is_empty() {
        let _ = writeln!(o, "<nav>{}</nav>", links.join(""));
    }
}

/// `(shown a–b of n)`.
fn shown(offset: usize, rows: usize, total: usize) -> String {
    if rows == 0 {
        format!("({total})")
    } else {
        format!("({}–{} of {total})", offset + 1, offset + rows)
    }
}

fn host_cell(ip: &str, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{} (id {})", esc(ip), esc(id)),
        None => esc(ip),
    }
}

fn silent(o: &mut String, st: &Status<'_>) {
    let p = st.silent;
    let _ = writeln!(
        o,
        "<section id=\"silent-hosts\"><h2>Silent hosts {}, longest first</h2>",
        shown(p.offset, p.hosts.len(), p.total)
    );
    if !p.hosts.is_empty() {
        o.push_str(
            "<table><tr><th>host</th><th>name</th><th>labels</th><th>silent for</th>\
             <th>last seen</th></tr>\n",
        );
        for h in &p.hosts {
            let _ = writeln!(
                o,
                "<tr class=\"silent\"><td>{}</td><td class=\"name\">{}</td><td>{}</td>\
                 <td class=\"n\">{}{}</td><td>{}</td></tr>",
                host_cell(&h.host, h.host_id.as_deref()),
                esc(h.name.as_deref().unwrap_or("")),
                labels(h.labels.as_ref()),
                ago(Duration::from_millis(h.silent_for_ms)),
                if h.flapping { " (flapping)" } else { "" },
                esc(&h.last_seen),
            );
        }
        o.push_str("</table>\n");
    }
    nav(o, st, p.total.max(st.missing as usize));
    o.push_str("</section>\n");
}

fn missing(o: &mut String, st: &Status<'_>) {
    if !st.inventory {
        return;
    }
    let _ = writeln!(
        o,
        "<section id=\"missing-hosts\"><h2>Missing hosts {}, longest first</h2>",
        shown(st.offset, st.missing_hosts.len(), st.missing as usize)
    );
    if !st.missing_hosts.is_empty() {
        o.push_str(
            "<table><tr><th>host</th><th>name</th><th>labels</th><th>missing for</th>\
             <th>expected since</th></tr>\n",
        );
        for h in st.missing_hosts {
            let _ = writeln!(
                o,
                "<tr class=\"missing\"><td>{}</td><td class=\"name\">{}</td><td>{}</td>\
                 <td class=\"n\">{}</td><td>{}</td></tr>",
                host_cell(h.host.as_deref().unwrap_or(""), h.host_id.as_deref()),
                esc(h.name.as_deref().unwrap_or("")),
                labels(h.labels.as_ref()),
                ago(Duration::from_millis(h.missing_for_ms)),
                esc(&h.expected_since),
            );
        }
        o.push_str("</table>\n");
    }
    nav(o, st, st.silent.total.max(st.missing as usize));
    o.push_str("</section>\n");
}

fn recent(o: &mut String, st: &Status<'_>) {
    let _ = writeln!(
        o,
        "<section id=\"recent\"><h2>Recent events ({}, newest first)</h2>",
        st.recent.len()
    );
    if !st.recent.is_empty() {
        o.push_str(
            "<table><tr><th>time</th><th>event</th><th>host</th><th>name</th><th></th></tr>\n",
        );
        for c in st.recent.newest_first() {
            let id = c.host_id.map(host_id);
            let extra = match c.kind.as_str() {
                "recovered" => format!("after {}", ago(Duration::from_nanos(c.for_ns))),
                "missing" => format!("expected for {}", ago(Duration::from_nanos(c.for_ns))),
                _ => String::new(),
            };
            let _ = writeln!(
                o,
                "<tr class=\"{kind}\"><td>{}</td><td>{kind}</td><td>{}</td>\
                 <td class=\"name\">{}</td><td>{extra}</td></tr>",
                timestamp(c.at),
                host_cell(&c.ip.to_string(), id.as_deref()),
                esc(&c.name),
                kind = c.kind.as_str(),
            );
        }
        o.push_str("</table>\n");
    }
    o.push_str("</section>\n");
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::UNIX_EPOCH};

    use hb_common::HostKey;

    use super::*;
    use crate::track::{events::Host, silent::SilentHost, tracker::Transition};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn silent_host(ip: &str, name: &str) -> SilentHost {
        SilentHost {
            host: ip.to_owned(),
            host_id: None,
            name: Some(name.to_owned()),
            labels: Some(OwnedLabels(vec![(
                "group".to_owned(),
                "<b>web</b>".to_owned(),
            )])),
            silent_since: timestamp(at(100)),
            last_seen: timestamp(at(90)),
            silent_for_ms: 125_000,
            lost: None,
            period_ms: None,
            jitter_ms: None,
            phi: None,
            flapping: false,
        }
    }

    struct Fixture {
        summary: Summary,
        silent: SilentPage,
        missing: Vec<MissingHost>,
        recent: Recent,
    }

    fn fixture() -> Fixture {
        let mut recent = Recent::default();
        recent.sweep_at(at(200));
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        recent.transition(
            &Transition::Silent {
                host: 7,
                silent_for_ns: 0,
            },
            &Host::addr(&HostKey::from_ipv4([10, 1, 2, 3])),
            Some("<img onerror=alert(1)>"),
        );
        assert_eq!(recent.newest_first().next().unwrap().ip, ip);
        Fixture {
            summary: Summary {
                hosts: 1234,
                alive: 1200,
                silent: 34,
                ..Default::default()
            },
            silent: SilentPage {
                total: 34,
                offset: 10,
                limit: 2,
                hosts: vec![
                    silent_host("10.1.2.3", "<script>alert(1)</script>"),
                    silent_host("10.1.2.4", "db & \"cache\""),
                ],
            },
            missing: vec![MissingHost {
                host: Some("10.9.9.9".to_owned()),
                host_id: None,
                name: Some("gone'".to_owned()),
                labels: None,
                expected_since: timestamp(at(10)),
                missing_for_ms: 3_000,
            }],
            recent,
        }
    }

    fn status(f: &Fixture) -> Status<'_> {
        Status {
            ingest: "xdp",
            timeout: Duration::from_secs(15),
            sweep: Duration::from_secs(1),
            summary: &f.summary,
            inventory: true,
            missing: 1,
            unknown: 2,
            ignored: 0,
            table_used: 1234,
            table_capacity: 4096,
            last_sweep: Some(at(200)),
            groups: vec![GroupRow {
                group: "<i>edge</i>",
                hosts: 3,
                alive: 2,
                silent: 1,
                missing: 0,
            }],
            silent: &f.silent,
            missing_hosts: &f.missing,
            recent: &f.recent,
            offset: 10,
            limit: 2,
            now: at(201),
        }
    }

    #[test]
    fn escapes_what_comes_from_the_inventory() {
        assert_eq!(
            esc("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        let f = fixture();
        let html = render(&status(&f));
        // Exactly one script element: ours.
        assert_eq!(html.matches("<script").count(), 1, "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(!html.contains("<i>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("db &amp; &quot;cache&quot;"), "{html}");
        assert!(html.contains("group=&lt;b&gt;web&lt;/b&gt;"), "{html}");
        assert!(html.contains("&lt;i&gt;edge&lt;/i&gt;"), "{html}");
        assert!(html.contains("gone&#39;"), "{html}");
        assert!(html.contains("&lt;img onerror=alert(1)&gt;"), "{html}");
    }

    #[test]
    fn shows_counts_lists_and_paging() {
        let f = fixture();
        let html = render(&status(&f));
        assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
        for want in [
            "id=\"hosts\">1234<",
            "id=\"alive\">1200<",
            "id=\"silent\">34<",
            "id=\"missing\">1<",
            "id=\"unknown\">2<",
            "1234 of 4096 slots (30.1%)",
            "id=\"ingest\">xdp<",
            "id=\"timeout\">15s<",
            "1970-01-01T00:03:20.000Z",
            // 11th and 12th of 34, silent for 2 min 5 s.
            "Silent hosts (11–12 of 34)",
            "2m 5s",
            "10.1.2.4",
            "Missing hosts (11–11 of 1)",
            "<td class=\"n\">3s</td>",
            ">silent<",
        ] {
            assert!(html.contains(want), "{want} not in {html}");
        }
        assert!(!html.contains("id=\"ignored\""), "{html}");
        // Previous page from 8, next from 12.
        assert!(
            html.contains("href=\"/?offset=8&amp;limit=2\">previous 2"),
            "{html}"
        );
        assert!(
            html.contains("href=\"/?offset=12&amp;limit=2\">next 2"),
            "{html}"
        );
        // No external assets: nothing is loaded from elsewhere.
        for asset in ["src=", "<link", "@import", "url("] {
            assert!(!html.contains(asset), "{asset} in {html}");
        }
    }

    #[test]
    fn the_last_page_has_no_next_and_the_first_no_previous() {
        let f = fixture();
        let mut st = status(&f);
        st.offset = 0;
        st.limit = 50;
        let html = render(&st);
        assert!(!html.contains("rel=\"prev\""), "{html}");
        assert!(!html.contains("rel=\"next\""), "{html}");
        st.offset = 32;
        st.limit = 2;
        let html = render(&st);
        assert!(html.contains("rel=\"prev\""), "{html}");
        assert!(!html.contains("rel=\"next\""), "{html}");
    }
}
