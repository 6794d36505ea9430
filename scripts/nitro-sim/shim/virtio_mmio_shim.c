// SPDX-License-Identifier: GPL-2.0
/*
 * virtio_mmio_shim - register virtio-mmio platform devices given as module parameters.
 *
 * Debian's kernels lack CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, so they ignore the
 * "virtio_mmio.device=SIZE@BASE:IRQ[:ID]" words by which QEMU's nitro-enclave machine
 * announces its virtio-mmio devices. Loaded with one "device=SIZE@BASE:IRQ[:ID]" per device,
 * this module registers a "virtio-mmio" platform device for each, as that option would.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/ioport.h>
#include <linux/limits.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/platform_device.h>

#define SHIM_MAX_DEVICES 16

static struct shim_dev {
	unsigned long long base, size;
	unsigned int irq;
	int id;
	struct platform_device *pdev;
} shim_devs[SHIM_MAX_DEVICES];
static unsigned int shim_count;
static int shim_next_id = 100;

/* Called once per "device=" occurrence; parses like vm_cmdline_set() in virtio_mmio.c. */
static int shim_device_set(const char *val, const struct kernel_param *kp)
{
	unsigned long long size;
	long long base = -1;
	unsigned int irq = 0;
	int id = shim_next_id, consumed = 0, processed;
	char *str;

	if (shim_count >= SHIM_MAX_DEVICES) {
		pr_err("more than %d device= parameters\n", SHIM_MAX_DEVICES);
		return -EINVAL;
	}
	if (!val)
		return -EINVAL;
	size = memparse(val, &str);
	processed = sscanf(str, "@%lli:%u%n:%d%n", &base, &irq, &consumed, &id, &consumed);
	if (processed < 2 || str[consumed] || size == 0 || base < 0 || irq == 0 || id < 0 ||
	    id == INT_MAX || size - 1 > ULLONG_MAX - (unsigned long long)base) {
		pr_err("invalid device=%s (expected SIZE@BASE:IRQ[:ID])\n", val);
		return -EINVAL;
	}
	shim_devs[shim_count++] = (struct shim_dev){ .base = base, .size = size, .irq = irq, .id = id };
	shim_next_id = id + 1;
	return 0;
}

static const struct kernel_param_ops shim_device_ops = {
	.set = shim_device_set,
};
module_param_cb(device, &shim_device_ops, NULL, 0400);
MODULE_PARM_DESC(device, "virtio-mmio device SIZE@BASE:IRQ[:ID]; repeat once per device");
/* No .get: the kernel log has one line per device. */

static void shim_unregister_all(void)
{
	unsigned int i = shim_count;

	while (i--) {
		platform_device_unregister(shim_devs[i].pdev); /* NULL-safe */
		shim_devs[i].pdev = NULL;
	}
}

static int __init shim_init(void)
{
	unsigned int i;

	for (i = 0; i < shim_count; i++) {
		struct shim_dev *d = &shim_devs[i];
		struct resource res[] = { DEFINE_RES_MEM(d->base, d->size), DEFINE_RES_IRQ(d->irq) };

		d->pdev = platform_device_register_resndata(NULL, "virtio-mmio", d->id, res,
							    ARRAY_SIZE(res), NULL, 0);
		if (IS_ERR(d->pdev)) {
			int err = PTR_ERR(d->pdev);

			pr_err("cannot register virtio-mmio.%d: %d\n", d->id, err);
			d->pdev = NULL;
			shim_unregister_all();
			return err;
		}
		pr_info("virtio-mmio.%d: [mem %#llx-%#llx] irq %u\n", d->id, d->base,
			d->base + d->size - 1, d->irq);
	}
	if (!shim_count)
		pr_info("no device= parameter given, nothing registered\n");
	return 0;
}

static void __exit shim_exit(void)
{
	shim_unregister_all();
}

module_init(shim_init);
module_exit(shim_exit);
MODULE_DESCRIPTION("Register virtio-mmio platform devices from device=SIZE@BASE:IRQ[:ID]");
MODULE_LICENSE("GPL");
