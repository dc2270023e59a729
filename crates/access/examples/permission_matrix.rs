//! Prints the built-in roles' permission matrix (docs/permissions.md embeds it).
fn main() {
    print!("{}", drivesec_access::permission_matrix_markdown());
}
