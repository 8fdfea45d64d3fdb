//go:build !linux

package api

import "errors"

func separateCores() (func(), error) {
	return nil, errors.New("setting the CPUs of processes is implemented on Linux only")
}
