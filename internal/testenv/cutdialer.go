package testenv

import (
	"errors"
	"net"
	"sync"
	"time"
)

// CutDialer dials connections (a ZooKeeper client's, through its dialer option) that the test can
// cut: SetCut(true) closes the open ones and refuses new ones until SetCut(false).
type CutDialer struct {
	mu    sync.Mutex
	cut   bool
	conns []net.Conn
}

// Dial has the shape of zk.Dialer.
func (d *CutDialer) Dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cut {
		return nil, errors.New("network cut by the test")
	}
	c, err := net.DialTimeout(network, addr, timeout)
	if err == nil {
		d.conns = append(d.conns, c)
	}
	return c, err
}

// SetCut cuts the network (closing every open connection) or mends it.
func (d *CutDialer) SetCut(cut bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cut = cut
	if cut {
		for _, c := range d.conns {
			_ = c.Close()
		}
		d.conns = nil
	}
}
