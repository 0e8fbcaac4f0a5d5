package invalidator

import "testing"

func TestOnlineReplicas(t *testing.T) {
	tests := []struct {
		name       string
		info       string
		wantOnline int
		wantMaster bool
	}{
		{"no replica", "# Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_repl_offset:0\r\n", 0, true},
		{"two online", "role:master\r\nconnected_slaves:2\r\n" +
			"slave0:ip=10.0.0.2,port=6379,state=online,offset=1234,lag=0\r\n" +
			"slave1:ip=10.0.0.3,port=6379,state=online,offset=1234,lag=1\r\n", 2, true},
		{"one syncing", "role:master\r\nconnected_slaves:2\r\n" +
			"slave0:ip=10.0.0.2,port=6379,state=online,offset=1234,lag=0\r\n" +
			"slave1:ip=10.0.0.3,port=6379,state=wait_bgsave,offset=0,lag=0\r\n", 1, true},
		{"one silent for 6s", "role:master\r\nconnected_slaves:2\r\n" +
			"slave0:ip=10.0.0.2,port=6379,state=online,offset=1234,lag=5\r\n" +
			"slave1:ip=10.0.0.3,port=6379,state=online,offset=1000,lag=6\r\n", 1, true},
		{"a replica", "role:slave\r\nmaster_host:10.0.0.1\r\nslave_repl_offset:10\r\nslave_read_repl_offset:10\r\nslave_priority:100\r\nconnected_slaves:0\r\n", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			online, master := onlineReplicas(tt.info)
			if online != tt.wantOnline || master != tt.wantMaster {
				t.Errorf("onlineReplicas = %d, %v; want %d, %v", online, master, tt.wantOnline, tt.wantMaster)
			}
		})
	}
}
