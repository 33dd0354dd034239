//! A hand-written parser (and renderer) for the Prometheus text exposition format 0.0.4.
//!
//! The parser works on raw bytes, never panics, and never gives up on a page: a line it cannot
//! read becomes a [`LineError`] carrying its line number and the remaining lines still parse.
//!
//! Two entry points:
//! - [`parse`] reads every line into an [`Exposition`] (families, their samples, HELP and TYPE).
//!   Histogram and summary samples (`_bucket`, `_sum`, `_count`, `_created`) and counter samples
//!   (`_total`, `_created`) join the family their `# TYPE` line declared.
//! - [`parse_filtered`] is the scraping path: it looks only at the metric name of each line and
//!   fully parses just the lines whose sample name is wanted; everything else is skipped
//!   unread (syntax errors in skipped lines are not reported). Each wanted sample name becomes
//!   its own family.
//!
//! Accepted syntax, beyond the strict grammar: blank lines, leading blanks, blanks around label
//! names, `=` and `,`, a trailing comma in a label set, `{}`, CRLF line endings and a missing
//! final newline. Values use Rust's float syntax, which includes `NaN`, `Inf`, `+Inf`, `-Inf`
//! and `Infinity` in any case; timestamps are optional signed integers (milliseconds).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// The type of a metric family, from its `# TYPE` line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MetricType {
    /// A monotonically increasing counter.
    Counter,
    /// A value that can go up and down.
    Gauge,
    /// A histogram (`_bucket{le=..}`, `_sum`, `_count` samples).
    Histogram,
    /// A summary (quantile samples, `_sum`, `_count`).
    Summary,
    /// No type declared, or declared `untyped`.
    #[default]
    Untyped,
}

impl MetricType {
    /// The keyword used on a `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Summary => "summary",
            MetricType::Untyped => "untyped",
        }
    }

    /// Parses a `# TYPE` keyword (ASCII case-insensitive).
    pub fn from_keyword(s: &[u8]) -> Option<Self> {
        [MetricType::Counter, MetricType::Gauge, MetricType::Histogram, MetricType::Summary, MetricType::Untyped]
            .into_iter()
            .find(|t| t.as_str().as_bytes().eq_ignore_ascii_case(s))
    }

    /// Sample-name suffixes that belong to a family of this type (besides the bare name).
    pub fn suffixes(self) -> &'static [&'static str] {
        match self {
            MetricType::Histogram => &["_bucket", "_sum", "_count", "_created"],
            MetricType::Summary => &["_sum", "_count", "_created"],
            MetricType::Counter => &["_total", "_created"],
            MetricType::Gauge | MetricType::Untyped => &[],
        }
    }
}

impl fmt::Display for MetricType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sample's labels in page order, stored compactly (one string buffer plus offsets) so that
/// a parsed series costs few allocations.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct LabelSet {
    buf: String,
    /// `(name_end, value_end)` offsets into `buf` for each label.
    ends: Vec<(usize, usize)>,
}

impl LabelSet {
    /// An empty label set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a label (duplicates are not checked).
    pub fn push(&mut self, name: &str, value: &str) {
        self.buf.push_str(name);
        let name_end = self.buf.len();
        self.buf.push_str(value);
        self.ends.push((name_end, self.buf.len()));
    }

    /// The value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True if there are no labels.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// `(name, value)` pairs in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(n, v)| {
            let pair = (self.buf.get(start..n).unwrap_or_default(), self.buf.get(n..v).unwrap_or_default());
            start = v;
            pair
        })
    }
}

impl fmt::Debug for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for LabelSet {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut l = LabelSet::new();
        for (k, v) in iter {
            l.push(k.as_ref(), v.as_ref());
        }
        l
    }
}

/// One sample line: a series (name and labels), its value and optional timestamp.
///
/// Equality treats two NaN values as equal, so parsed pages compare as expected.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// The sample's metric name, including any suffix such as `_bucket`.
    pub name: String,
    /// Labels in the order they appeared.
    pub labels: LabelSet,
    /// The value.
    pub value: f64,
    /// Optional timestamp in milliseconds since the Unix epoch.
    pub timestamp: Option<i64>,
}

impl Sample {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name)
    }
}

impl PartialEq for Sample {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.labels == other.labels
            && self.timestamp == other.timestamp
            && (self.value == other.value || (self.value.is_nan() && other.value.is_nan()))
    }
}

/// A metric family: a name, its HELP and TYPE, and its samples in page order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Family {
    /// The family name (as on the `# TYPE` line, or the sample name when undeclared).
    pub name: String,
    /// The HELP text, unescaped.
    pub help: Option<String>,
    /// The declared type ([`MetricType::Untyped`] if none).
    pub kind: MetricType,
    /// Samples in page order.
    pub samples: Vec<Sample>,
}

impl Family {
    /// Samples whose name is exactly `name` (e.g. the `_bucket` samples of a histogram).
    pub fn samples_named<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a Sample> + use<'a, 'n> {
        self.samples.iter().filter(move |s| s.name == name)
    }
}

/// What went wrong on one line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineErrorKind {
    /// The line does not start with a valid metric name.
    #[error("invalid metric name")]
    InvalidMetricName,
    /// A label name is missing or invalid.
    #[error("invalid label name")]
    InvalidLabelName,
    /// The same label appears twice in one label set.
    #[error("duplicate label {0:?}")]
    DuplicateLabel(String),
    /// A specific character was expected.
    #[error("expected {0:?}")]
    Expected(char),
    /// A quoted label value runs to the end of the line.
    #[error("unterminated label value")]
    UnterminatedLabelValue,
    /// A backslash escape other than `\\`, `\"` or `\n`.
    #[error("invalid escape sequence")]
    InvalidEscape,
    /// A label value or HELP text that is not UTF-8.
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// The sample has no value.
    #[error("missing value")]
    MissingValue,
    /// The value is not a float.
    #[error("invalid value {0:?}")]
    InvalidValue(String),
    /// The timestamp is not an integer.
    #[error("invalid timestamp {0:?}")]
    InvalidTimestamp(String),
    /// Text after the timestamp.
    #[error("unexpected text after sample")]
    TrailingText,
    /// A `# TYPE` keyword other than counter, gauge, histogram, summary, untyped.
    #[error("unknown metric type {0:?}")]
    UnknownType(String),
    /// A second `# TYPE` line, or a `# TYPE` line after the family's samples.
    #[error("unexpected TYPE line for {0}")]
    UnexpectedType(String),
    /// A second `# HELP` line for the same family.
    #[error("second HELP line for {0}")]
    DuplicateHelp(String),
}

/// A line that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What went wrong.
    pub kind: LineErrorKind,
}

/// A parsed page: its families in order of first appearance, plus the lines that failed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exposition {
    /// Families in order of first appearance.
    pub families: Vec<Family>,
    /// Lines that could not be parsed (the rest of the page was still read).
    pub errors: Vec<LineError>,
}

impl Exposition {
    /// The family named `name` (linear search; pages hold tens of families).
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// All samples named exactly `name`, across families.
    pub fn samples_named<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a Sample> + use<'a, 'n> {
        self.families.iter().flat_map(move |f| f.samples_named(name))
    }

    /// Total number of samples.
    pub fn sample_count(&self) -> usize {
        self.families.iter().map(|f| f.samples.len()).sum()
    }
}

/// Renders the families (not the errors) in the text format; [`parse`] reads it back equal.
impl fmt::Display for Exposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for fam in &self.families {
            if let Some(help) = &fam.help {
                write!(f, "# HELP {} ", fam.name)?;
                for c in help.chars() {
                    match c {
                        '\\' => f.write_str("\\\\")?,
                        '\n' => f.write_str("\\n")?,
                        c => fmt::Write::write_char(f, c)?,
                    }
                }
                f.write_str("\n")?;
            }
            writeln!(f, "# TYPE {} {}", fam.name, fam.kind)?;
            for s in &fam.samples {
                write_sample(f, s)?;
            }
        }
        Ok(())
    }
}

fn write_sample(f: &mut fmt::Formatter<'_>, s: &Sample) -> fmt::Result {
    f.write_str(&s.name)?;
    if !s.labels.is_empty() {
        f.write_str("{")?;
        for (i, (k, v)) in s.labels.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}=\"")?;
            write_escaped_label_value(f, v)?;
            f.write_str("\"")?;
        }
        f.write_str("}")?;
    }
    f.write_str(" ")?;
    write_value(f, s.value)?;
    if let Some(ts) = s.timestamp {
        write!(f, " {ts}")?;
    }
    f.write_str("\n")
}

/// Writes a label value with `\\`, `\"` and `\n` escaped.
pub fn write_escaped_label_value(f: &mut impl fmt::Write, v: &str) -> fmt::Result {
    for c in v.chars() {
        match c {
            '\\' => f.write_str("\\\\")?,
            '"' => f.write_str("\\\"")?,
            '\n' => f.write_str("\\n")?,
            c => f.write_char(c)?,
        }
    }
    Ok(())
}

/// Writes a float the way Prometheus does for specials (`NaN`, `+Inf`, `-Inf`), otherwise the
/// shortest representation that reads back to the same value.
pub fn write_value(f: &mut impl fmt::Write, v: f64) -> fmt::Result {
    if v.is_nan() {
        f.write_str("NaN")
    } else if v == f64::INFINITY {
        f.write_str("+Inf")
    } else if v == f64::NEG_INFINITY {
        f.write_str("-Inf")
    } else {
        write!(f, "{v:?}")
    }
}

/// Parses a whole page. Never panics; bad lines are reported in [`Exposition::errors`].
pub fn parse(input: &[u8]) -> Exposition {
    Parser::new(None).run(input)
}

/// Parses only the samples whose name is one of `wanted` (the scraping fast path).
///
/// Each wanted name that has samples (or a HELP/TYPE line) becomes one family holding exactly the
/// samples with that name. Lines with other names are skipped without being parsed, so their
/// syntax errors are not reported; lines without a valid metric name are.
pub fn parse_filtered(input: &[u8], wanted: &[&str]) -> Exposition {
    Parser::new(Some(wanted)).run(input)
}

// ---------------------------------------------------------------------------------------------

const fn class_table(first: bool, colon: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphabetic() || b == b'_' || (colon && b == b':') || (!first && b.is_ascii_digit());
        i += 1;
    }
    t
}

static METRIC_FIRST: [bool; 256] = class_table(true, true);
static METRIC_REST: [bool; 256] = class_table(false, true);
static LABEL_FIRST: [bool; 256] = class_table(true, false);
static LABEL_REST: [bool; 256] = class_table(false, false);

/// True if `s` is a valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn is_valid_metric_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && METRIC_FIRST[usize::from(b[0])] && b[1..].iter().all(|&c| METRIC_REST[usize::from(c)])
}

/// True if `s` is a valid label name (`[a-zA-Z_][a-zA-Z0-9_]*`).
pub fn is_valid_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && LABEL_FIRST[usize::from(b[0])] && b[1..].iter().all(|&c| LABEL_REST[usize::from(c)])
}

/// Index of the first `\n` in `s`, scanning eight bytes at a time.
fn find_newline(s: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = LO * b'\n' as u64;
    let mut chunks = s.chunks_exact(8);
    let mut base = 0;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let x = u64::from_le_bytes(w) ^ NL;
        let t = x.wrapping_sub(LO) & !x & HI;
        if t != 0 {
            return Some(base + (t.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks.remainder().iter().position(|&b| b == b'\n').map(|p| base + p)
}

/// A cursor over one line.
struct Cursor<'a> {
    b: &'a [u8],
    /// The same line as text, when the whole page is valid UTF-8 (saves validating each piece).
    text: Option<&'a str>,
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// `b[start..end]` as text.
    fn str(&self, start: usize, end: usize) -> Result<&'a str, LineErrorKind> {
        match self.text {
            Some(t) => t.get(start..end),
            None => self.b.get(start..end).and_then(|b| std::str::from_utf8(b).ok()),
        }
        .ok_or(LineErrorKind::InvalidUtf8)
    }

    /// Like [`Cursor::ident`], as text.
    fn ident_str(&mut self, first: &[bool; 256], rest: &[bool; 256]) -> &'a str {
        let start = self.pos;
        self.ident(first, rest);
        self.str(start, self.pos).unwrap_or_default()
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.b.len()
    }

    /// Reads `[first][rest]*`; empty slice if the first byte does not qualify.
    fn ident(&mut self, first: &[bool; 256], rest: &[bool; 256]) -> &'a [u8] {
        let start = self.pos;
        if self.peek().is_some_and(|c| first[usize::from(c)]) {
            self.pos += 1;
            while self.peek().is_some_and(|c| rest[usize::from(c)]) {
                self.pos += 1;
            }
        }
        self.b.get(start..self.pos).unwrap_or_default()
    }

    /// Reads a run of non-blank bytes.
    fn token(&mut self) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(|c| c != b' ' && c != b'\t') {
            self.pos += 1;
        }
        self.b.get(start..self.pos).unwrap_or_default()
    }

    fn rest(&self) -> &'a [u8] {
        self.b.get(self.pos..).unwrap_or_default()
    }
}

fn to_string(b: &[u8]) -> Result<String, LineErrorKind> {
    std::str::from_utf8(b).map(str::to_owned).map_err(|_| LineErrorKind::InvalidUtf8)
}

/// A name already checked against the (ASCII) name tables.
fn ascii(b: &[u8]) -> String {
    std::str::from_utf8(b).map(str::to_owned).unwrap_or_default()
}

fn lossy(b: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(b).into_owned();
    if s.len() > 64 {
        let mut end = 64;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Reads a quoted label value; the cursor is just past the opening quote.
fn label_value<'a>(c: &mut Cursor<'a>) -> Result<Cow<'a, str>, LineErrorKind> {
    let start = c.pos;
    // Fast path: no escapes.
    loop {
        match c.peek() {
            None => return Err(LineErrorKind::UnterminatedLabelValue),
            Some(b'"') => {
                let v = c.str(start, c.pos)?;
                c.pos += 1;
                return Ok(Cow::Borrowed(v));
            }
            Some(b'\\') => break,
            Some(_) => c.pos += 1,
        }
    }
    let mut out: Vec<u8> = c.b.get(start..c.pos).unwrap_or_default().to_vec();
    loop {
        match c.peek() {
            None => return Err(LineErrorKind::UnterminatedLabelValue),
            Some(b'"') => {
                c.pos += 1;
                return String::from_utf8(out).map(Cow::Owned).map_err(|_| LineErrorKind::InvalidUtf8);
            }
            Some(b'\\') => {
                c.pos += 1;
                match c.peek() {
                    Some(b'\\') => out.push(b'\\'),
                    Some(b'"') => out.push(b'"'),
                    Some(b'n') => out.push(b'\n'),
                    None => return Err(LineErrorKind::UnterminatedLabelValue),
                    Some(_) => return Err(LineErrorKind::InvalidEscape),
                }
                c.pos += 1;
            }
            Some(b) => {
                out.push(b);
                c.pos += 1;
            }
        }
    }
}

/// Reads a label set; the cursor is just past `{`.
fn label_set(c: &mut Cursor<'_>) -> Result<LabelSet, LineErrorKind> {
    // One allocation each: the rest of the line bounds the label text.
    let mut labels =
        LabelSet { buf: String::with_capacity(c.b.len().saturating_sub(c.pos)), ends: Vec::with_capacity(4) };
    loop {
        c.skip_blanks();
        match c.peek() {
            Some(b'}') => {
                c.pos += 1;
                return Ok(labels);
            }
            None => return Err(LineErrorKind::Expected('}')),
            Some(_) => {}
        }
        let name = c.ident_str(&LABEL_FIRST, &LABEL_REST);
        if name.is_empty() {
            return Err(LineErrorKind::InvalidLabelName);
        }
        c.skip_blanks();
        if c.peek() != Some(b'=') {
            return Err(LineErrorKind::Expected('='));
        }
        c.pos += 1;
        c.skip_blanks();
        if c.peek() != Some(b'"') {
            return Err(LineErrorKind::Expected('"'));
        }
        c.pos += 1;
        let value = label_value(c)?;
        if labels.get(name).is_some() {
            return Err(LineErrorKind::DuplicateLabel(name.to_owned()));
        }
        labels.push(name, &value);
        c.skip_blanks();
        match c.peek() {
            Some(b',') => c.pos += 1,
            Some(b'}') => {
                c.pos += 1;
                return Ok(labels);
            }
            _ => return Err(LineErrorKind::Expected('}')),
        }
    }
}

fn parse_value(tok: &[u8], text: Option<&str>) -> Result<f64, LineErrorKind> {
    if tok.is_empty() {
        return Err(LineErrorKind::MissingValue);
    }
    text.and_then(|s| s.parse::<f64>().ok()).ok_or_else(|| LineErrorKind::InvalidValue(lossy(tok)))
}

/// Parses the rest of a sample line after its name.
fn sample_rest(c: &mut Cursor<'_>, name: &str) -> Result<Sample, LineErrorKind> {
    c.skip_blanks();
    let labels = if c.peek() == Some(b'{') {
        c.pos += 1;
        label_set(c)?
    } else {
        LabelSet::new()
    };
    c.skip_blanks();
    let start = c.pos;
    let tok = c.token();
    let value = parse_value(tok, c.str(start, c.pos).ok())?;
    c.skip_blanks();
    let timestamp = if c.at_end() {
        None
    } else {
        let start = c.pos;
        let tok = c.token();
        let ts = c
            .str(start, c.pos)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| LineErrorKind::InvalidTimestamp(lossy(tok)))?;
        c.skip_blanks();
        if !c.at_end() {
            return Err(LineErrorKind::TrailingText);
        }
        Some(ts)
    };
    Ok(Sample { name: name.to_owned(), labels, value, timestamp })
}

fn unescape_help(b: &[u8], text: Option<&str>) -> Result<String, LineErrorKind> {
    if !b.contains(&b'\\') {
        return match text {
            Some(t) => Ok(t.to_owned()),
            None => to_string(b),
        };
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&x) = b.get(i) {
        if x == b'\\' {
            match b.get(i + 1) {
                Some(b'\\') => out.push(b'\\'),
                Some(b'n') => out.push(b'\n'),
                // Unknown escapes (and a trailing backslash) are kept as written.
                Some(&y) => {
                    out.push(b'\\');
                    out.push(y);
                }
                None => out.push(b'\\'),
            }
            i += 2;
        } else {
            out.push(x);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| LineErrorKind::InvalidUtf8)
}

struct Parser<'w> {
    wanted: Option<&'w [&'w str]>,
    families: Vec<Family>,
    /// Whether a TYPE line was seen for the family at the same index.
    typed: Vec<bool>,
    index: HashMap<String, usize>,
    current: Option<usize>,
    errors: Vec<LineError>,
}

impl<'w> Parser<'w> {
    fn new(wanted: Option<&'w [&'w str]>) -> Self {
        Parser {
            wanted,
            families: Vec::new(),
            typed: Vec::new(),
            index: HashMap::new(),
            current: None,
            errors: Vec::new(),
        }
    }

    fn run(mut self, input: &[u8]) -> Exposition {
        // Validating a full page once is cheaper than validating every label value; the filtered
        // path reads too little of the page for that to pay off.
        let page = if self.wanted.is_none() { std::str::from_utf8(input).ok() } else { None };
        let mut rest = input;
        let mut offset = 0usize;
        let mut line_no = 0usize;
        while !rest.is_empty() {
            line_no += 1;
            let (line, next) = match find_newline(rest) {
                Some(i) => (rest.get(..i).unwrap_or_default(), rest.get(i + 1..).unwrap_or_default()),
                None => (rest, &[][..]),
            };
            let start = offset;
            offset += rest.len() - next.len();
            rest = next;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let text = page.and_then(|p| p.get(start..start + line.len()));
            if let Err(kind) = self.line(line, text) {
                self.errors.push(LineError { line: line_no, kind });
            }
        }
        Exposition { families: self.families, errors: self.errors }
    }

    fn is_wanted(&self, name: &[u8]) -> bool {
        self.wanted.is_none_or(|w| w.iter().any(|n| n.as_bytes() == name))
    }

    fn line(&mut self, line: &[u8], text: Option<&str>) -> Result<(), LineErrorKind> {
        let mut c = Cursor { b: line, text, pos: 0 };
        c.skip_blanks();
        match c.peek() {
            None => Ok(()),
            Some(b'#') => {
                c.pos += 1;
                self.comment(&mut c)
            }
            Some(_) => {
                let name = c.ident(&METRIC_FIRST, &METRIC_REST);
                if name.is_empty() {
                    return Err(LineErrorKind::InvalidMetricName);
                }
                if !self.is_wanted(name) {
                    return Ok(());
                }
                let name = std::str::from_utf8(name).unwrap_or_default(); // ASCII by construction
                let sample = sample_rest(&mut c, name)?;
                let idx = self.family_for(&sample.name);
                if let Some(f) = self.families.get_mut(idx) {
                    f.samples.push(sample);
                }
                self.current = Some(idx);
                Ok(())
            }
        }
    }

    fn comment(&mut self, c: &mut Cursor<'_>) -> Result<(), LineErrorKind> {
        c.skip_blanks();
        let word = c.token();
        let is_help = word == b"HELP";
        if !is_help && word != b"TYPE" {
            return Ok(()); // plain comment
        }
        c.skip_blanks();
        let name = c.ident(&METRIC_FIRST, &METRIC_REST);
        if name.is_empty() || !matches!(c.peek(), None | Some(b' ' | b'\t')) {
            return Err(LineErrorKind::InvalidMetricName);
        }
        if !self.is_wanted(name) {
            return Ok(());
        }
        c.skip_blanks();
        let name = ascii(name);
        if is_help {
            let help = unescape_help(c.rest(), c.text.and_then(|t| t.get(c.pos..)))?;
            let idx = self.family_named(&name);
            let fam = self.families.get_mut(idx).ok_or(LineErrorKind::InvalidMetricName)?;
            if fam.help.is_some() {
                return Err(LineErrorKind::DuplicateHelp(name));
            }
            fam.help = Some(help);
        } else {
            let kw = c.token();
            c.skip_blanks();
            let kind = MetricType::from_keyword(kw).ok_or_else(|| LineErrorKind::UnknownType(lossy(kw)))?;
            if !c.at_end() {
                return Err(LineErrorKind::TrailingText);
            }
            let idx = self.family_named(&name);
            let typed = self.typed.get(idx).copied().unwrap_or(true);
            let fam = self.families.get_mut(idx).ok_or(LineErrorKind::InvalidMetricName)?;
            if typed || !fam.samples.is_empty() {
                return Err(LineErrorKind::UnexpectedType(name));
            }
            fam.kind = kind;
            if let Some(t) = self.typed.get_mut(idx) {
                *t = true;
            }
        }
        Ok(())
    }

    /// The family called exactly `name`, created if new.
    fn family_named(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.families.len();
        self.families.push(Family { name: name.to_owned(), ..Family::default() });
        self.typed.push(false);
        self.index.insert(name.to_owned(), i);
        i
    }

    /// The family a sample called `name` belongs to, created (untyped) if none claims it.
    fn family_for(&mut self, name: &str) -> usize {
        let claims = |f: &Family| {
            f.name == name
                || name.strip_prefix(f.name.as_str()).is_some_and(|suffix| f.kind.suffixes().contains(&suffix))
        };
        if let Some(i) = self.current
            && self.families.get(i).is_some_and(claims)
        {
            return i;
        }
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        if self.wanted.is_none() {
            for suffix in ["_bucket", "_sum", "_count", "_total", "_created"] {
                if let Some(base) = name.strip_suffix(suffix)
                    && let Some(&i) = self.index.get(base)
                    && self.families.get(i).is_some_and(|f| f.kind.suffixes().contains(&suffix))
                {
                    return i;
                }
            }
        }
        self.family_named(name)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn newline_finder_matches_naive() {
        let data = b"abc\ndefghijklmnop\nq\n\n0123456789abcdef0123\n";
        let mut rest = &data[..];
        while !rest.is_empty() {
            let a = find_newline(rest);
            let b = rest.iter().position(|&c| c == b'\n');
            assert_eq!(a, b);
            rest = &rest[1..];
        }
        assert_eq!(find_newline(&[0x8a; 17]), None);
        assert_eq!(find_newline(&[0x0b, 0x09, 0xff, 0x0a]), Some(3));
    }

    #[test]
    fn parses_basic_page() {
        let page = b"# HELP vllm:num_requests_running Number of requests.\n\
# TYPE vllm:num_requests_running gauge\n\
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 187.0\n\
x{a=\"x\", b=\"y\",} 1 1700000000000\n\
y{} NaN\n\
z +Inf\n\
w -Inf\n\
v Inf\n";
        let e = parse(page);
        assert!(e.errors.is_empty(), "{:?}", e.errors);
        let f = e.family("vllm:num_requests_running").unwrap();
        assert_eq!(f.kind, MetricType::Gauge);
        assert_eq!(f.help.as_deref(), Some("Number of requests."));
        assert_eq!(f.samples[0].value, 187.0);
        assert_eq!(f.samples[0].label("model_name"), Some("m"));
        let x = &e.family("x").unwrap().samples[0];
        assert_eq!(x.labels, [("a", "x"), ("b", "y")].into_iter().collect());
        assert_eq!(x.labels.iter().collect::<Vec<_>>(), vec![("a", "x"), ("b", "y")]);
        assert_eq!(x.timestamp, Some(1_700_000_000_000));
        assert!(e.family("y").unwrap().samples[0].value.is_nan());
        assert!(e.family("y").unwrap().samples[0].labels.is_empty());
        assert_eq!(e.family("z").unwrap().samples[0].value, f64::INFINITY);
        assert_eq!(e.family("w").unwrap().samples[0].value, f64::NEG_INFINITY);
        assert_eq!(e.family("v").unwrap().samples[0].value, f64::INFINITY);
    }

    #[test]
    fn label_value_escapes_and_specials() {
        let e = parse(b"m{a=\"q\\\"}, x\\\\y\\nz\",b=\"{=}\"} 2\n");
        assert!(e.errors.is_empty(), "{:?}", e.errors);
        let s = &e.families[0].samples[0];
        assert_eq!(s.label("a"), Some("q\"}, x\\y\nz"));
        assert_eq!(s.label("b"), Some("{=}"));
    }

    #[test]
    fn bad_lines_are_reported_and_skipped() {
        let page = b"ok 1\n9bad 1\nm{a=\"x} 1\nm{a=\"\\q\"} 1\nm{a=\"x\"} abc\nm 1 2 3\nm{a=\"x\",a=\"y\"} 1\n\
# TYPE q blah\nm\nm 1 1.5\nlast 2";
        let e = parse(page);
        let kinds: Vec<_> = e.errors.iter().map(|e| (e.line, e.kind.clone())).collect();
        assert_eq!(
            kinds,
            vec![
                (2, LineErrorKind::InvalidMetricName),
                (3, LineErrorKind::UnterminatedLabelValue),
                (4, LineErrorKind::InvalidEscape),
                (5, LineErrorKind::InvalidValue("abc".into())),
                (6, LineErrorKind::TrailingText),
                (7, LineErrorKind::DuplicateLabel("a".into())),
                (8, LineErrorKind::UnknownType("blah".into())),
                (9, LineErrorKind::MissingValue),
                (10, LineErrorKind::InvalidTimestamp("1.5".into())),
            ]
        );
        assert_eq!(e.family("ok").unwrap().samples[0].value, 1.0);
        assert_eq!(e.family("last").unwrap().samples[0].value, 2.0);
    }

    #[test]
    fn histogram_and_counter_samples_join_their_family() {
        let page = b"# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n\
# TYPE c counter\nc_total 5\nc_created 1.7e9\n# TYPE g gauge\ng_sum 1\n";
        let e = parse(page);
        assert!(e.errors.is_empty());
        let names: Vec<_> = e.families.iter().map(|f| (f.name.as_str(), f.samples.len())).collect();
        assert_eq!(names, vec![("h", 4), ("c", 2), ("g", 0), ("g_sum", 1)]);
        assert_eq!(e.family("h").unwrap().samples_named("h_bucket").count(), 2);
    }

    #[test]
    fn type_after_samples_is_an_error() {
        let e = parse(b"a 1\n# TYPE a gauge\n# TYPE b gauge\n# TYPE b counter\n# HELP b x\n# HELP b y\n");
        assert_eq!(e.errors.len(), 3);
        assert_eq!(e.errors[0].kind, LineErrorKind::UnexpectedType("a".into()));
        assert_eq!(e.family("b").unwrap().kind, MetricType::Gauge);
        assert_eq!(e.family("b").unwrap().help.as_deref(), Some("x"));
    }

    #[test]
    fn filtered_parse_keeps_only_wanted() {
        let page = b"# TYPE a gauge\na{x=\"1\"} 1\nb{broken 1\nc 3\na{x=\"2\"} 2\n";
        let e = parse_filtered(page, &["a", "c"]);
        assert!(e.errors.is_empty());
        assert_eq!(e.families.len(), 2);
        assert_eq!(e.family("a").unwrap().kind, MetricType::Gauge);
        assert_eq!(e.family("a").unwrap().samples.len(), 2);
        assert_eq!(e.family("c").unwrap().samples[0].value, 3.0);
    }

    #[test]
    fn invalid_utf8_in_label_value() {
        let e = parse(b"a{x=\"\xff\"} 1\nb 2\n");
        assert_eq!(e.errors, vec![LineError { line: 1, kind: LineErrorKind::InvalidUtf8 }]);
        assert_eq!(e.families.len(), 1);
    }

    #[test]
    fn crlf_and_blanks() {
        let e = parse(b"  a { x = \"1\" , } 1 \r\n\r\n\t# comment\r\nb\t2\t10\r\n");
        assert!(e.errors.is_empty(), "{:?}", e.errors);
        assert_eq!(e.family("b").unwrap().samples[0].timestamp, Some(10));
        assert_eq!(e.family("a").unwrap().samples[0].label("x"), Some("1"));
    }

    #[test]
    fn renders_and_reparses() {
        let page = b"# HELP a line\\nbreak \\\\ ok\n# TYPE a counter\na_total{l=\"q\\\"\\n\\\\\"} 1e300 -5\n";
        let e = parse(page);
        assert!(e.errors.is_empty());
        assert_eq!(e.families[0].help.as_deref(), Some("line\nbreak \\ ok"));
        let back = parse(e.to_string().as_bytes());
        assert_eq!(back, e);
    }
}
