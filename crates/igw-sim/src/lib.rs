//! igw-sim (being built).
