//! igw-metrics (being built).
