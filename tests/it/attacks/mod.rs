//! Our own attack suite: each file attacks one surface the way an outside suite would.
//! Attacks that live beside the feature they attack are listed here, so this file is the
//! map of what is covered and where.
//!
//! | surface | here | beside the feature |
//! |---|---|---|
//! | TLS listener: SNI, ALPN, HTTP/2 floods | `tls` | `tls::https_from_files_…` |

mod behind_nginx;
mod enumeration;
mod metrics;
mod sessions;
mod tls;
