# QEMU device set for x86_64-softmmu with only the AWS Nitro Enclave machine.
# Copied by scripts/nitro-sim/qemu.sh to configs/devices/x86_64-softmmu/nitro.mak and
# selected with `--without-default-devices --with-devices-x86_64=nitro`.
# NITRO_ENCLAVE selects MICROVM, EIF, VHOST_USER_VSOCK and VIRTIO_NSM (hw/i386/Kconfig);
# it needs libcbor, gnutls, fdt and vhost-user at configure time.
CONFIG_NITRO_ENCLAVE=y
