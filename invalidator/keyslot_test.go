package invalidator

import "testing"

// TestKeySlot checks keySlot against the slots CLUSTER KEYSLOT of Redis
// 7.0.15 gave for the same keys, hash tags and their edge cases included.
func TestKeySlot(t *testing.T) {
	if got := crc16("123456789"); got != 0x31C3 { // the cluster specification's check value
		t.Errorf("crc16(123456789) = %#x, want 0x31c3", got)
	}
	for _, tt := range []struct {
		key  string
		want int
	}{
		{"", 0},
		{"123456789", 12739},
		{"foo", 12182},
		{"bar", 5061},
		{"item:0", 9178},
		{"item:999999", 1803},
		{"{user1000}.following", 3443}, // a tag: the same slot as the next
		{"{user1000}.followers", 3443},
		{"foo{}{bar}", 8363},     // an empty tag hashes the whole key
		{"foo{{bar}}zap", 4015},  // the tag is "{bar"
		{"foo{bar}{zap}", 5061},  // the first tag only: "bar"
		{"{}", 15257},            // empty: the whole key
		{"{a}", 15495},           // "a"
		{"a{b", 13340},           // no '}': the whole key
		{"a}b{c}", 7365},         // a '}' before the '{' does not count: "c"
		{"{", 4092},              // the whole key
		{"}{x}", 16287},          // "x"
		{"produit:\u00e9", 3714}, // bytes, not runes
	} {
		if got := keySlot(tt.key); got != tt.want {
			t.Errorf("keySlot(%q) = %d, want %d", tt.key, got, tt.want)
		}
	}
}
