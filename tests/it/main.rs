//! The one integration-test binary: every test talks to real sockets on 127.0.0.1:0.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod acme;
mod apps;
mod attacks;
mod bounds;
mod bridge_lane;
mod chaos;
mod cimd;
mod cli;
mod console;
mod dpop;
mod fastlane;
mod flow;
mod gate;
mod helpers;
mod layers;
mod nginx_example;
mod oauth;
mod packaging;
mod passkeys;
mod pg;
mod policy;
mod postgres;
mod production;
mod providers;
mod proxy;
mod quirks;
mod replicas;
mod secrets;
mod servers;
mod stdio;
mod store;
mod store_contract;
mod tls;
