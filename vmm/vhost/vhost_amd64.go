package vhost

// ioctl request numbers (linux/vhost.h: _IO*(VHOST_VIRTIO=0xAF, nr,
// type)), x86-64 encoding.
const (
	getFeatures   = 0x8008af00 // _IOR(0xAF, 0x00, __u64)
	setFeatures   = 0x4008af00 // _IOW(0xAF, 0x00, __u64)
	setOwner      = 0xaf01     // _IO(0xAF, 0x01)
	setMemTable   = 0x4008af03 // _IOW(0xAF, 0x03, struct vhost_memory)
	setVringNum   = 0x4008af10 // _IOW(0xAF, 0x10, struct vhost_vring_state)
	setVringAddr  = 0x4028af11 // _IOW(0xAF, 0x11, struct vhost_vring_addr)
	setVringBase  = 0x4008af12 // _IOW(0xAF, 0x12, struct vhost_vring_state)
	getVringBase  = 0xc008af12 // _IOWR(0xAF, 0x12, struct vhost_vring_state)
	setVringKick  = 0x4008af20 // _IOW(0xAF, 0x20, struct vhost_vring_file)
	setVringCall  = 0x4008af21 // _IOW(0xAF, 0x21, struct vhost_vring_file)
	setVringErr   = 0x4008af22 // _IOW(0xAF, 0x22, struct vhost_vring_file)
	netSetBackend = 0x4008af30 // _IOW(0xAF, 0x30, struct vhost_vring_file)
)
