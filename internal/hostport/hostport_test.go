package hostport

import "testing"

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		addr       string
		zero, open bool
		ok         bool
	}{
		{"127.0.0.1:8080", false, false, true},
		{"127.0.0.1:0", true, false, true},
		{"127.0.0.1:0", false, false, false},
		{"127.0.0.1:99999", true, false, false},
		{"127.0.0.1:-1", true, false, false},
		{"127.0.0.1", false, false, false},
		{":8080", false, false, false},
		{":8080", false, true, true},
		{"[::1]:8080", false, false, true},
		{"localhost:http", false, false, false},
	} {
		err := Validate(tc.addr, tc.zero, tc.open)
		if (err == nil) != tc.ok {
			t.Errorf("Validate(%q, zero=%v, open=%v) = %v, want ok=%v", tc.addr, tc.zero, tc.open, err, tc.ok)
		}
	}
}
