// Package deps pins the project's chosen modules while the packages that use
// them are written; it is removed once they are all imported for real.
package deps

import (
	_ "github.com/bobuhiro11/gokvm/kvm"
	_ "github.com/pierrec/lz4/v4"
	_ "github.com/spf13/cobra"
	_ "golang.org/x/sys/unix"
)
