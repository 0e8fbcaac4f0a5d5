package invalidator

import "strings"

// keySlot returns the Redis Cluster hash slot of key, as the cluster
// specification defines it: the CRC16 of the key modulo 16,384. When the key
// holds a '{' and, after it, a '}' with at least one byte between them,
// only the bytes between that first '{' and the first '}' after it are
// hashed (a hash tag), so that keys with the same tag share a slot.
func keySlot(key string) int {
	if open := strings.IndexByte(key, '{'); open >= 0 {
		if n := strings.IndexByte(key[open+1:], '}'); n > 0 {
			key = key[open+1 : open+1+n]
		}
	}
	return int(crc16(key)) % clusterSlots
}

// crc16 is the CRC16 Redis Cluster uses (CRC-16/XMODEM): polynomial 0x1021,
// initial value 0, bits not reflected, no final XOR. The specification
// gives its check value: crc16("123456789") is 0x31C3.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc = crc<<8 ^ crc16Table[byte(crc>>8)^s[i]]
	}
	return crc
}

// crc16Table holds the CRC16 of each byte value shifted into the high
// byte: the remainder of b·x¹⁶ divided by the polynomial, one bit at a time.
var crc16Table = func() (t [256]uint16) {
	for b := range t {
		crc := uint16(b) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
		t[b] = crc
	}
	return t
}()
