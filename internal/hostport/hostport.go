// Package hostport validates "host:port" network addresses given in configuration, so that every
// component reports a bad address the same way before it tries to listen or dial.
package hostport

import (
	"fmt"
	"net"
	"strconv"
)

// Validate reports whether addr is "host:port" with a port in 1-65535, or 0 when allowZero is set
// (listen on any free port). The host may be empty (all interfaces) only if allowEmptyHost is set.
func Validate(addr string, allowZero, allowEmptyHost bool) error {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port", addr)
	}
	if host == "" && !allowEmptyHost {
		return fmt.Errorf("%q has no host", addr)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return fmt.Errorf("%q: port %q is not a number", addr, portStr)
	}
	min := 1
	if allowZero {
		min = 0
	}
	if port < min || port > 65535 {
		return fmt.Errorf("%q: port %d out of range %d-65535", addr, port, min)
	}
	return nil
}
