//! igw-sched (being built).
pub mod flow;
pub mod prefix;
