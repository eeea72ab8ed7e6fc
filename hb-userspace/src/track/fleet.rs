//! The operator's fleet: which hosts are expected (the inventory), their
//! names and labels, and per-group timeouts. What the config file's
//! `[inventory]` and `[groups.NAME]` tables and the matching options say,
//! handed to the sweeper as one value so that a reload swaps it whole.
//!
//! An inventory of a million hosts must stay small and load fast, so it is
//! kept column-wise: the keys in one array (file order), a compact hash
//! index of `u32`s over them, every name in one string arena, and label
//! sets interned (most hosts share one of a few: a host pays a `u32` for
//! its labels). A host is an *entry*: its index in the file's order.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use hashbrown::HashMap;
use hb_common::HostKey;

pub mod kept;
pub mod roll;
use serde::ser::{Serialize, SerializeMap, Serializer};

/// Hosts the inventory does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownHosts {
    /// Reported `new` and tracked, as without an inventory.
    #[default]
    Track,
    /// Counted, not tracked.
    Ignore,
}

/// Per-group settings (`[groups.NAME]`): hosts whose `group` label is NAME.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupPolicy {
    pub timeout: Option<super::adaptive::Timeout>,
    pub grace: Option<Duration>,
}

/// What the configuration says about the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// The inventory CSV; `None`: no inventory, every host is `new` when first heard.
    pub inventory: Option<PathBuf>,
    /// An inventoried host not heard within this after start (or after it was added) is `missing`.
    pub grace: Duration,
    pub unknown_hosts: UnknownHosts,
    /// Hosts outside the inventory are forgotten after this much silence.
    pub forget_after: Duration,
    pub groups: BTreeMap<String, GroupPolicy>,
}

pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_FORGET_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            inventory: None,
            grace: DEFAULT_GRACE,
            unknown_hosts: UnknownHosts::Track,
            forget_after: DEFAULT_FORGET_AFTER,
            groups: BTreeMap::new(),
        }
    }
}

/// A bad inventory or group setting, said so that the operator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `line` is 1-based, counting the header.
    #[error("{path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A host's policy class: 0 for hosts without a group (the top-level
/// timeout and grace), 1.. for each group, in name order; `MUTED` for
/// hosts outside the inventory with `unknown_hosts = ignore`. One byte a
/// slot in the tracker, hence the cap on groups.
pub type Class = u8;
pub const DEFAULT_CLASS: Class = 0;
pub const MUTED: Class = u8::MAX;
/// Groups (distinct `group` labels and `[groups.NAME]` tables) at most.
pub const MAX_GROUPS: usize = MUTED as usize - 1;

/// What hosts of one class share.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassPolicy {
    /// The group's name; "" for class 0.
    pub group: String,
    /// `None`: the collector's `--timeout`.
    pub timeout: Option<super::adaptive::Timeout>,
    pub grace: Duration,
}

/// Which column identifies the hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyColumn {
    Address,
    HostId,
}

/// The loaded fleet: the inventory's hosts with their names and labels, and
/// the policies. `Send`, so a reload can load it off the event loop.
#[derive(Debug, Default)]
pub struct Fleet {
    pub config: FleetConfig,
    inventory: Option<Inventory>,
    /// Indexed by `Class` (below `MUTED`).
    classes: Vec<ClassPolicy>,
}

/// The hosts of an inventory file, column-wise (see the module docs).
#[derive(Debug)]
pub struct Inventory {
    path: PathBuf,
    column: KeyColumn,
    keys: Vec<HostKey>,
    /// Open addressing over `keys`: entry + 1, 0 for empty; a power of two
    /// at least 1.5 times the hosts.
    index: Vec<u32>,
    /// Every name, one after the other; entry i's is
    /// `names[name_ends[i - 1]..name_ends[i]]` (empty: no name).
    names: String,
    name_ends: Vec<u32>,
    /// Entry -> label set.
    label_of: Vec<u32>,
    /// The label columns, in file order.
    label_names: Vec<Box<str>>,
    sets: Vec<LabelSet>,
}

#[derive(Debug)]
struct LabelSet {
    /// One per label column; `None` where the cell is empty.
    values: Box<[Option<Box<str>>]>,
    class: Class,
}

/// An inventoried host's name and labels, as events and pages show them.
#[derive(Debug, Clone, Copy)]
pub struct Ident<'a> {
    pub name: Option<&'a str>,
    pub labels: Labels<'a>,
}

/// A host's labels: (name, value) pairs, in the file's column order.
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a> {
    names: &'a [Box<str>],
    values: &'a [Option<Box<str>>],
}

impl<'a> Labels<'a> {
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let (names, values) = (self.names, self.values);
        names
            .iter()
            .zip(values)
            .filter_map(|(n, v)| Some((&**n, v.as_deref()?)))
    }

    pub fn is_empty(&self) -> bool {
        self.values.iter().all(Option::is_none)
    }
}

impl Serialize for Labels<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl fmt::Display for Ident<'_> {
    /// `web-17 group=web dc=fra`: values with spaces, quotes or `=` quoted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(name) = self.name {
            write!(f, "{name}")?;
            sep = " ";
        }
        for (k, v) in self.labels.iter() {
            if v.is_empty() || v.contains(|c: char| c.is_whitespace() || c == '"' || c == '=') {
                write!(f, "{sep}{k}={v:?}")?;
            } else {
                write!(f, "{sep}{k}={v}")?;
            }
            sep = " ";
        }
        Ok(())
    }
}

impl Fleet {
    /// Reads the inventory the config names and checks the groups.
    pub fn load(config: &FleetConfig) -> Result<Fleet, FleetError> {
        let mut classes = vec![ClassPolicy {
            group: String::new(),
            timeout: None,
            grace: config.grace,
        }];
        for (name, g) in &config.groups {
            if name.is_empty() {
                return Err(FleetError::Invalid("groups: a group needs a name".into()));
            }
            classes.push(ClassPolicy {
                group: name.clone(),
                timeout: g.timeout,
                grace: g.grace.unwrap_or(config.grace),
            });
        }
        if classes.len() > MAX_GROUPS + 1 {
            return Err(FleetError::Invalid(format!(
                "groups: at most {MAX_GROUPS} groups, {} configured",
                classes.len() - 1
            )));
        }
        let inventory = match &config.inventory {
            Some(path) => {
                let file = std::fs::File::open(path).map_err(|source| FleetError::Read {
                    path: path.clone(),
                    source,
                })?;
                Some(Inventory::read(
                    path,
                    std::io::BufReader::with_capacity(1 << 16, file),
                    &mut classes,
                    config.grace,
                )?)
            }
            None => None,
        };
        Ok(Fleet {
            config: config.clone(),
            inventory,
            classes,
        })
    }

    pub fn inventory(&self) -> Option<&Inventory> {
        self.inventory.as_ref()
    }

    /// Policies by class (below `MUTED`): class 0 and one a group.
    pub fn classes(&self) -> &[ClassPolicy] {
        if self.classes.is_empty() {
            // A `Fleet::default()`: the defaults.
            static DEFAULT: std::sync::OnceLock<Vec<ClassPolicy>> = std::sync::OnceLock::new();
            return DEFAULT.get_or_init(|| {
                vec![ClassPolicy {
                    group: String::new(),
                    timeout: None,
                    grace: DEFAULT_GRACE,
                }]
            });
        }
        &self.classes
    }

    /// Heap bytes of the fleet (for the memory figure).
    pub fn heap_bytes(&self) -> usize {
        self.inventory.as_ref().map_or(0, Inventory::heap_bytes)
    }
}

/// The key of a host id, as the table keys signed hosts.
fn parse_host_id(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_address(s: &str) -> Option<HostKey> {
    Some(match s.parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) => HostKey::from_ipv4(v4.octets()),
        IpAddr::V6(v6) => HostKey::from_ipv6(v6.octets()),
    })
}

/// A label name Prometheus accepts (`[a-zA-Z_][a-zA-Z0-9_]*`, no leading
/// `__`, which is reserved).
fn label_name_ok(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

/// Labels hb's own series and events use: a column may not take them.
const RESERVED: &[&str] = &["host", "host_id", "state", "event", "ts"];

/// Mixes every bit of the key into every bit of the hash (murmur3's
/// finalizer): the varying bytes of an IPv4 key are its top ones, which a
/// bare multiplication would leave out of the index's bits.
fn hash(key: &HostKey) -> u64 {
    let [a, b] = key.words();
    let mut h = a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl Inventory {
    /// Reads an inventory from `input` (`path` names it in errors). Group
    /// labels not among `classes` are added to them (grace `grace`).
    fn read(
        path: &Path,
        input: impl std::io::Read,
        classes: &mut Vec<ClassPolicy>,
        grace: Duration,
    ) -> Result<Self, FleetError> {
        let err = |line: usize, message: String| FleetError::Line {
            path: path.to_owned(),
            line,
            message,
        };
        let csv_err = |e: csv::Error| {
            let line = e.position().map_or(1, |p| p.line() as usize);
            match e.into_kind() {
                csv::ErrorKind::Io(source) => FleetError::Read {
                    path: path.to_owned(),
                    source,
                },
                csv::ErrorKind::UnequalLengths {
                    expected_len, len, ..
                } => err(line, format!("{len} fields, the header has {expected_len}")),
                csv::ErrorKind::Utf8 { .. } => err(line, "not UTF-8".into()),
                kind => err(line, format!("{kind:?}")),
            }
        };
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(csv::Trim::All)
            .comment(Some(b'#'))
            .from_reader(input);
        let header = reader.headers().map_err(csv_err)?.clone();
        let mut key_col = None;
        let mut name_col = None;
        let mut label_cols = Vec::new();
        let mut label_names: Vec<Box<str>> = Vec::new();
        for (i, h) in header.iter().enumerate() {
            let column = match h {
                "address" => Some(KeyColumn::Address),
                "host_id" => Some(KeyColumn::HostId),
                _ => None,
            };
            if let Some(c) = column {
                if let Some((_, other)) = key_col {
                    let other = if other == KeyColumn::Address {
                        "address"
                    } else {
                        "host_id"
                    };
                    return Err(err(
                        1,
                        format!(
                            "two key columns, `{other}` and `{h}`: an inventory lists hosts by `address` or by `host_id`, not both"
                        ),
                    ));
                }
                key_col = Some((i, c));
            } else if h == "name" {
                if name_col.is_some() {
                    return Err(err(1, "two `name` columns".into()));
                }
                name_col = Some(i);
            } else {
                if !label_name_ok(h) {
                    return Err(err(
                        1,
                        format!(
                            "column `{h}`: not a label name (letters, digits and _, not starting with a digit or __)"
                        ),
                    ));
                }
                if RESERVED.contains(&h) {
                    return Err(err(1, format!("column `{h}`: hb uses this label itself")));
                }
                if label_names.iter().any(|n| &**n == h) {
                    return Err(err(1, format!("two `{h}` columns")));
                }
                label_cols.push(i);
                label_names.push(h.into());
            }
        }
        let Some((key_col, column)) = key_col else {
            return Err(err(
                1,
                "no `address` or `host_id` column: the header must name the column that identifies hosts".into(),
            ));
        };
        let group_col = label_names.iter().position(|n| &**n == "group");

        let mut inv = Inventory {
            path: path.to_owned(),
            column,
            keys: Vec::new(),
            index: Vec::new(),
            names: String::new(),
            name_ends: Vec::new(),
            label_of: Vec::new(),
            label_names,
            sets: Vec::new(),
        };
        // Label sets by their values joined with \0 (looked up without an
        // allocation a host).
        let mut set_ids: HashMap<Box<str>, u32> = HashMap::new();
        let mut joined = String::new();
        // Line of each entry, for the duplicate's message only: kept
        // until the index is built.
        let mut lines: Vec<u32> = Vec::new();
        let mut record = csv::StringRecord::new();
        while reader.read_record(&mut record).map_err(csv_err)? {
            let line = record.position().map_or(0, |p| p.line() as usize);
            let cell = &record[key_col];
            let key = match column {
                KeyColumn::Address => parse_address(cell).ok_or_else(|| {
                    err(
                        line,
                        format!("address `{cell}`: not an IPv4 or IPv6 address"),
                    )
                })?,
                KeyColumn::HostId => {
                    HostKey::from_host_id(parse_host_id(cell).ok_or_else(|| {
                        err(
                            line,
                            format!("host_id `{cell}`: not a 64-bit number (decimal or 0x-hex)"),
                        )
                    })?)
                }
            };
            if inv.keys.len() >= u32::MAX as usize - 1 {
                return Err(err(line, "too many hosts".into()));
            }
            inv.keys.push(key);
            lines.push(line as u32);
            if let Some(c) = name_col {
                inv.names.push_str(&record[c]);
            }
            let end = u32::try_from(inv.names.len())
                .map_err(|_| err(line, "names: more than 4 GiB in all".into()))?;
            inv.name_ends.push(end);
            joined.clear();
            for &c in &label_cols {
                joined.push_str(&record[c]);
                joined.push('\0');
            }
            let set = match set_ids.get(joined.as_str()) {
                Some(&id) => id,
                None => {
                    let values: Box<[Option<Box<str>>]> = label_cols
                        .iter()
                        .map(|&c| Some(&record[c]).filter(|v| !v.is_empty()).map(Into::into))
                        .collect();
                    let class = match group_col.and_then(|g| values[g].as_deref()) {
                        None => DEFAULT_CLASS,
                        Some(g) => match classes.iter().position(|c| c.group == g) {
                            Some(i) => i as Class,
                            None if classes.len() <= MAX_GROUPS => {
                                classes.push(ClassPolicy {
                                    group: g.to_owned(),
                                    timeout: None,
                                    grace,
                                });
                                (classes.len() - 1) as Class
                            }
                            None => {
                                return Err(err(
                                    line,
                                    format!("group `{g}`: more than {MAX_GROUPS} groups"),
                                ));
                            }
                        },
                    };
                    let id = inv.sets.len() as u32;
                    inv.sets.push(LabelSet { values, class });
                    set_ids.insert(joined.as_str().into(), id);
                    id
                }
            };
            inv.label_of.push(set);
        }
        inv.keys.shrink_to_fit();
        inv.names.shrink_to_fit();
        inv.name_ends.shrink_to_fit();
        inv.label_of.shrink_to_fit();
        inv.build_index().map_err(|(dup, first)| {
            err(
                lines[dup] as usize,
                format!(
                    "host {} listed twice (first on line {})",
                    key_text(column, &inv.keys[dup]),
                    lines[first]
                ),
            )
        })?;
        Ok(inv)
    }

    /// Fills the index; a duplicate key: `Err((its entry, the first's))`.
    fn build_index(&mut self) -> Result<(), (usize, usize)> {
        let n = self.keys.len();
        let size = (n + n / 2).next_power_of_two().max(8);
        self.index = vec![0; size];
        let mask = size - 1;
        for (e, key) in self.keys.iter().enumerate() {
            let mut i = hash(key) as usize & mask;
            loop {
                match self.index[i] {
                    0 => {
                        self.index[i] = e as u32 + 1;
                        break;
                    }
                    f if self.keys[f as usize - 1] == *key => return Err((e, f as usize - 1)),
                    _ => i = (i + 1) & mask,
                }
            }
        }
        Ok(())
    }

    /// The entry of the host `key`, if listed.
    pub fn entry(&self, key: &HostKey) -> Option<u32> {
        let mask = self.index.len().checked_sub(1)?;
        let mut i = hash(key) as usize & mask;
        loop {
            match self.index[i] {
                0 => return None,
                f if self.keys[f as usize - 1] == *key => return Some(f - 1),
                _ => i = (i + 1) & mask,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn column(&self) -> KeyColumn {
        self.column
    }

    pub fn key(&self, entry: u32) -> &HostKey {
        &self.keys[entry as usize]
    }

    pub fn name(&self, entry: u32) -> Option<&str> {
        let e = entry as usize;
        let start = if e == 0 {
            0
        } else {
            self.name_ends[e - 1] as usize
        };
        let name = &self.names[start..self.name_ends[e] as usize];
        (!name.is_empty()).then_some(name)
    }

    pub fn class(&self, entry: u32) -> Class {
        self.sets[self.label_of[entry as usize] as usize].class
    }

    pub fn ident(&self, entry: u32) -> Ident<'_> {
        Ident {
            name: self.name(entry),
            labels: Labels {
                names: &self.label_names,
                values: &self.sets[self.label_of[entry as usize] as usize].values,
            },
        }
    }

    /// Distinct label sets.
    pub fn label_sets(&self) -> usize {
        self.sets.len()
    }

    pub fn heap_bytes(&self) -> usize {
        let sets: usize = self
            .sets
            .iter()
            .map(|s| {
                size_of::<LabelSet>()
                    + s.values.len() * size_of::<Option<Box<str>>>()
                    + s.values.iter().flatten().map(|v| v.len()).sum::<usize>()
            })
            .sum();
        self.keys.capacity() * size_of::<HostKey>()
            + self.index.capacity() * 4
            + self.names.capacity()
            + self.name_ends.capacity() * 4
            + self.label_of.capacity() * 4
            + sets
    }
}

/// A key as the inventory writes it.
pub fn key_text(column: KeyColumn, key: &HostKey) -> String {
    match (column, key.host_id()) {
        (KeyColumn::HostId, Some(id)) => format!("host_id {id:#x}"),
        _ => key.ip().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<(Inventory, Vec<ClassPolicy>), FleetError> {
        let mut classes = vec![ClassPolicy {
            group: String::new(),
            timeout: None,
            grace: DEFAULT_GRACE,
        }];
        let inv = Inventory::read(
            Path::new("hosts.csv"),
            text.as_bytes(),
            &mut classes,
            DEFAULT_GRACE,
        )?;
        Ok((inv, classes))
    }

    fn line_error(text: &str) -> (usize, String) {
        match read(text) {
            Err(FleetError::Line { line, message, .. }) => (line, message),
            Err(e) => panic!("not a line error: {e}"),
            Ok(_) => panic!("accepted: {text}"),
        }
    }

    #[test]
    fn hosts_names_and_labels() {
        let (inv, classes) = read(
            "address,name,group,dc\n10.1.2.3,web-17,web,fra\n2001:db8::7,,db,\n::ffff:10.1.2.4,web-18,web,fra\n",
        )
        .unwrap();
        assert_eq!(inv.len(), 3);
        assert_eq!(inv.label_sets(), 2);
        let e = inv.entry(&HostKey::from_ipv4([10, 1, 2, 3])).unwrap();
        assert_eq!(inv.name(e), Some("web-17"));
        let labels: Vec<_> = inv.ident(e).labels.iter().collect();
        assert_eq!(labels, [("group", "web"), ("dc", "fra")]);
        assert_eq!(inv.ident(e).to_string(), "web-17 group=web dc=fra");
        let v6: std::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
        let e6 = inv.entry(&HostKey::from_ipv6(v6.octets())).unwrap();
        assert_eq!(inv.name(e6), None);
        assert_eq!(inv.ident(e6).to_string(), "group=db");
        // An IPv4-mapped address is the IPv4 host.
        let e4 = inv.entry(&HostKey::from_ipv4([10, 1, 2, 4])).unwrap();
        assert_eq!(inv.name(e4), Some("web-18"));
        assert!(inv.entry(&HostKey::from_ipv4([10, 1, 2, 5])).is_none());
        // Groups from the labels, in order of appearance after class 0.
        let groups: Vec<_> = classes.iter().map(|c| c.group.as_str()).collect();
        assert_eq!(groups, ["", "web", "db"]);
        assert_eq!(inv.class(e), 1);
        assert_eq!(inv.class(e6), 2);
        let json = serde_json::to_string(&inv.ident(e).labels).unwrap();
        assert_eq!(json, r#"{"group":"web","dc":"fra"}"#);
    }

    #[test]
    fn host_ids_decimal_and_hex() {
        let (inv, _) = read("host_id,name\n42,a\n0x2b,b\n").unwrap();
        assert_eq!(
            inv.name(inv.entry(&HostKey::from_host_id(42)).unwrap()),
            Some("a")
        );
        assert_eq!(
            inv.name(inv.entry(&HostKey::from_host_id(43)).unwrap()),
            Some("b")
        );
        assert!(inv.entry(&HostKey::from_ipv4([0, 0, 0, 42])).is_none());
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            line_error("address,name\n10.0.0.1,a\n10.0.0.300,b\n").0,
            3,
            "a bad address"
        );
        let (line, msg) = line_error("address,name\n10.0.0.1,a\n10.0.0.2,b\n10.0.0.1,c\n");
        assert_eq!(line, 4);
        assert!(msg.contains("10.0.0.1") && msg.contains("line 2"), "{msg}");
        assert_eq!(line_error("host_id\n1\n0xZZ\n").0, 3);
        assert_eq!(line_error("host_id\n7\n0x7\n").0, 3, "the same id twice");
        let (line, msg) = line_error("name,group\nx,y\n");
        assert_eq!(line, 1);
        assert!(msg.contains("no `address` or `host_id`"), "{msg}");
        assert_eq!(line_error("address,host_id\n").0, 1);
        assert_eq!(line_error("address,address\n").0, 1);
        assert_eq!(line_error("address,dc,dc\n").0, 1);
        assert!(
            line_error("address,data-center\n")
                .1
                .contains("data-center")
        );
        assert_eq!(line_error("address,__x\n").0, 1);
        assert_eq!(line_error("address,1dc\n").0, 1);
        assert_eq!(line_error("address,host\n").0, 1);
        assert_eq!(line_error("address,name\n10.0.0.1,a\n10.0.0.2\n").0, 3);
    }

    #[test]
    fn errors_name_the_file() {
        let config = FleetConfig {
            inventory: Some("/nonexistent/hosts.csv".into()),
            ..Default::default()
        };
        let e = Fleet::load(&config).unwrap_err().to_string();
        assert!(e.starts_with("/nonexistent/hosts.csv: "), "{e}");
        let dir = std::env::temp_dir().join(format!("hb-fleet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts.csv");
        std::fs::write(&path, "address\n10.0.0.1\nbogus\n").unwrap();
        let config = FleetConfig {
            inventory: Some(path.clone()),
            ..Default::default()
        };
        let e = Fleet::load(&config).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            e,
            format!(
                "{}:3: address `bogus`: not an IPv4 or IPv6 address",
                path.display()
            )
        );
    }

    #[test]
    fn configured_groups_come_first_and_keep_their_policy() {
        let dir = std::env::temp_dir().join(format!("hb-fleet-g-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts.csv");
        std::fs::write(
            &path,
            "address,group\n10.0.0.1,web\n10.0.0.2,db\n10.0.0.3,\n",
        )
        .unwrap();
        let mut groups = BTreeMap::new();
        groups.insert(
            "db".to_owned(),
            GroupPolicy {
                timeout: Some(crate::track::adaptive::Timeout::Fixed(Duration::from_secs(
                    60,
                ))),
                grace: Some(Duration::from_secs(300)),
            },
        );
        let config = FleetConfig {
            inventory: Some(path),
            grace: Duration::from_secs(10),
            groups,
            ..Default::default()
        };
        let fleet = Fleet::load(&config).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let inv = fleet.inventory().unwrap();
        let class = |ip| inv.class(inv.entry(&HostKey::from_ipv4(ip)).unwrap()) as usize;
        let c = fleet.classes();
        assert_eq!(c[class([10, 0, 0, 2])].group, "db");
        assert_eq!(
            c[class([10, 0, 0, 2])].timeout,
            Some(crate::track::adaptive::Timeout::Fixed(Duration::from_secs(
                60
            )))
        );
        assert_eq!(c[class([10, 0, 0, 2])].grace, Duration::from_secs(300));
        assert_eq!(c[class([10, 0, 0, 1])].group, "web");
        assert_eq!(c[class([10, 0, 0, 1])].timeout, None);
        assert_eq!(c[class([10, 0, 0, 1])].grace, Duration::from_secs(10));
        assert_eq!(class([10, 0, 0, 3]), 0);
    }

    #[test]
    fn many_hosts_share_few_label_sets() {
        let mut text = String::from("address,name,group,dc\n");
        for i in 0..10_000u32 {
            let [_, _, a, b] = i.to_be_bytes();
            text.push_str(&format!("10.9.{a}.{b},h{i},g{},dc{}\n", i % 4, i % 3));
        }
        let (inv, _) = read(&text).unwrap();
        assert_eq!(inv.len(), 10_000);
        assert_eq!(inv.label_sets(), 12);
        for i in (0..10_000u32).step_by(997) {
            let [_, _, a, b] = i.to_be_bytes();
            let e = inv.entry(&HostKey::from_ipv4([10, 9, a, b])).unwrap();
            assert_eq!(inv.name(e), Some(format!("h{i}").as_str()));
        }
    }
}
