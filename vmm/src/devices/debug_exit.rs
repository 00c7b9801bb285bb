//! A debug-exit port: the guest writes a status code to port 0xf4 and the VM ends with it
//! (compatible in placement with qemu's `isa-debug-exit,iobase=0xf4,iosize=4`, whose process
//! exit status is `(code << 1) | 1`).

/// The port.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Ports covered.
pub const DEBUG_EXIT_LEN: u16 = 4;

/// Decode a write of 1, 2 or 4 bytes to the debug-exit port into a status code.
pub fn decode(data: &[u8]) -> u32 {
    let mut v = [0u8; 4];
    let n = data.len().min(4);
    v[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_sizes() {
        assert_eq!(super::decode(&[7]), 7);
        assert_eq!(super::decode(&[1, 2]), 0x201);
        assert_eq!(super::decode(&[1, 2, 3, 4]), 0x0403_0201);
    }
}
