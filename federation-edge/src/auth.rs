//! Credential checks shared by the front ends: the proxy's `Proxy-Authorization: Basic`
//! credentials and the bridge API's `Authorization: Bearer` token are both compared with
//! [`constant_time_eq`], so the time an answer takes does not tell how much of a guess was
//! right.

/// Compares without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"a:b", b"a:b"));
        assert!(!constant_time_eq(b"a:b", b"a:c"));
        assert!(!constant_time_eq(b"a:b", b"a:bb"));
    }
}
