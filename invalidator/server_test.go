package invalidator

import "testing"

// The INFO server fields below are what Redis 8.0.2 and Valkey 8.1.1
// answered in the version matrix's images.
func TestServerOf(t *testing.T) {
	for _, tc := range []struct {
		info map[string]string
		want string
	}{
		{map[string]string{"redis_version": "8.0.2", "redis_mode": "standalone"}, "redis 8.0.2"},
		{map[string]string{"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "8.1.1"}, "valkey 8.1.1"},
		{map[string]string{}, "redis unknown"},
	} {
		if got := ServerOf(tc.info).String(); got != tc.want {
			t.Errorf("ServerOf(%v) = %q, want %q", tc.info, got, tc.want)
		}
	}
}
