//! Request parameters from the query string and the body (SPEC §2.2).
//!
//! INTERFACE SKELETON — the implementation replaces the bodies.

/// Parameters by name; a later source overrides an earlier one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// The value that wins for `name` (the last one set), if any.
    pub fn get(&self, _name: &str) -> Option<&str> {
        unimplemented!()
    }
}

/// Why parameters could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamError {
    /// 400 `{"res":"invalid parameters","error":<text>}`.
    Invalid(String),
    /// 415 for a body whose content type we do not read.
    UnsupportedMediaType(String),
}

/// Reads the parameters of one request: the query string first, then the
/// body according to `content_type` (the raw header value, if any).
pub fn extract(
    _query: Option<&str>,
    _content_type: Option<&[u8]>,
    _body: &[u8],
) -> Result<Params, ParamError> {
    unimplemented!()
}
