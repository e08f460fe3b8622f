//! Unit tests of the API state machine: requests and completions in, replies and frames out.

use super::*;
