package testenv

import (
	"net"
	"testing"
	"time"
)

// A private ZooKeeper starts, dies with kill -9, and comes back on the same address.
func TestPrivateServer(t *testing.T) {
	p := StartPrivate(t, "zookeeper")
	dial := func() error {
		c, err := net.DialTimeout("tcp", p.Addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(); err != nil {
		t.Fatalf("private zookeeper not reachable: %v", err)
	}
	p.Kill9(t)
	if err := dial(); err == nil {
		t.Fatal("private zookeeper still reachable after kill -9")
	}
	p.Start(t)
	if err := dial(); err != nil {
		t.Fatalf("private zookeeper not back: %v", err)
	}
}
