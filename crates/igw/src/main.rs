//! The `igw` command line.

fn main() {
    println!("igw");
}
