//! igw-sched (being built).
