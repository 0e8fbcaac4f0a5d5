package invalidator

import (
	"fmt"
	"testing"
)

func TestOwnSlots(t *testing.T) {
	const other = "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922\n"
	tests := []struct {
		name, nodes string
		want        string
	}{
		{"ranges and a single slot", "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected\n" +
			"67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 10923 16000-16383\n" + other,
			"[[0 5460] [10923 10923] [16000 16383]]"},
		{"migrating and importing slots do not count", "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-100 [101->-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca] [102-<-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca]\n",
			"[[0 100]]"},
		{"a node that has not joined", "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 :30001@31001 myself,master - 0 0 0 connected\n", "[]"},
		{"no myself line", other, "[]"},
		{"a replica", "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 myself,slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected\n" + other, "[]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fmt.Sprint(ownSlots(tt.nodes)); got != tt.want {
				t.Errorf("ownSlots = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestInfoField(t *testing.T) {
	info := "# Server\r\nredis_version:7.0.15\r\nrun_id:3c1d6fbd8b3a5f1d0d0b4b0e2f0c1a9d8e7f6a5b\r\ntcp_port:6379\r\n"
	if got, want := infoField(info, "run_id"), "3c1d6fbd8b3a5f1d0d0b4b0e2f0c1a9d8e7f6a5b"; got != want {
		t.Errorf("infoField(run_id) = %q, want %q", got, want)
	}
	if got := infoField(info, "run"); got != "" {
		t.Errorf("infoField(run) = %q, want empty", got)
	}
}
