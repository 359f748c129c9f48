//! Broker tests on an in-process group (nameserver + three brokers on loopback), one test binary so the
//! group harness links once. Each module holds the tests of one concern; see `common` for the harness.

mod common;
mod deposed_leader;
mod late_namesrv;
mod reset;
mod schedule;
mod send_back;
mod timestamps;
mod transactions;
