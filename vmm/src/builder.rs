//! Turning a [`VmConfig`] into a ready-to-run [`Vm`]: KVM objects, guest memory, the loaded
//! kernel, boot structures, devices and configured vCPUs. Nothing runs until [`Vm::run`];
//! on any error everything created so far is dropped (fds closed, memory unmapped).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_mp_state, kvm_pit_config, kvm_userspace_memory_region, KVM_MP_STATE_RUNNABLE,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::gdt::{BOOT_GDT, PVH_GDT};
use crate::boot::{acpi, bootparams, loader, mptable, paging, pvh, BootError};
use crate::config::{ApStart, BootProtocol, ConsoleConfig, VmConfig};
use crate::cpu::{cpuid, msr, regs};
use crate::devices::bus::Bus;
use crate::devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use crate::devices::serial::{SerialDevice, COM1_BASE, COM1_IRQ, COM1_LEN};
use crate::devices::testdev::{TestDevice, TESTDEV_PORT, TESTDEV_PORT_LEN};
use crate::devices::virtio::VirtioMmioNet;
use crate::devices::EventFdTrigger;
use crate::event_loop::{ExitWatcher, StdinForwarder};
use crate::memory::{self, layout};
use crate::vcpu::{Control, Vcpu};
use crate::vm::{Subscriber, Vm};
use crate::VmError;

/// Builds a [`Vm`] from a [`VmConfig`].
pub struct VmBuilder {
    config: VmConfig,
    console: Option<Box<dyn Write + Send>>,
    seccomp: bool,
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |e| VmError::Kvm(what, e)
}

impl VmBuilder {
    /// Start from `config`.
    pub fn new(config: VmConfig) -> Self {
        Self {
            config,
            console: None,
            seccomp: true,
        }
    }

    /// Send guest console output to `w` instead of what the config says (tests, benchmarks).
    pub fn console_writer(mut self, w: Box<dyn Write + Send>) -> Self {
        self.console = Some(w);
        self
    }

    /// Install the per-thread seccomp filters (default: yes).
    pub fn seccomp(mut self, on: bool) -> Self {
        self.seccomp = on;
        self
    }

    fn console_out(&mut self) -> Result<(Box<dyn Write + Send>, bool), VmError> {
        if let Some(w) = self.console.take() {
            return Ok((w, false));
        }
        Ok(match &self.config.console {
            ConsoleConfig::Stdio => {
                // Unbuffered duplicate of stdout: every guest byte is visible at once.
                let fd = std::io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(VmError::Console)?;
                (Box::new(std::fs::File::from(fd)), true)
            }
            ConsoleConfig::File(p) => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(VmError::Console)?;
                (Box::new(f), false)
            }
            ConsoleConfig::None => (Box::new(std::io::sink()), false),
        })
    }

    /// Create everything; see the module docs.
    pub fn build(mut self) -> Result<Vm, VmError> {
        let cfg = self.config.clone();
        if cfg.vcpus == 0 {
            return Err(VmError::Vcpus {
                requested: 0,
                max: 0,
            });
        }
        if cfg.net.len() > MAX_NET_DEVICES {
            return Err(VmError::TooManyNetDevices(cfg.net.len()));
        }
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        // APIC ids are 8 bits and the IOAPIC takes the id after the last CPU.
        let max = kvm.get_max_vcpus().min(MAX_VCPUS);
        if usize::from(cfg.vcpus) > max {
            return Err(VmError::Vcpus {
                requested: cfg.vcpus.into(),
                max,
            });
        }
        let mem = memory::create_guest_memory(cfg.memory_mib)?;
        let vm_fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        register_memory(&vm_fd, &mem)?;
        vm_fd
            .set_tss_address(layout::KVM_TSS as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm_fd
            .create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        vm_fd
            .create_pit2(kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            })
            .map_err(kvm_err("KVM_CREATE_PIT2"))?;

        // Kernel, initrd, command line, zero page, page tables, GDT, MP table.
        let kernel = loader::load_kernel(&mem, &cfg.kernel).map_err(BootError::from)?;
        let initrd = match &cfg.initrd {
            Some(p) => {
                let limit = kernel
                    .setup_header
                    .map(|h| u64::from(h.initrd_addr_max))
                    .filter(|l| *l != 0)
                    .unwrap_or(0x37ff_ffff);
                let (a, s) =
                    loader::load_initrd(&mem, p, kernel.end, limit).map_err(BootError::from)?;
                Some((a.raw_value(), s))
            }
            None => None,
        };
        let mut cmdline =
            Cmdline::try_from(&cfg.cmdline, layout::CMDLINE_MAX).map_err(VmError::Cmdline)?;
        for i in 0..cfg.net.len() {
            let (base, gsi) = virtio_slot(i);
            // Read by kernels with VIRTIO_MMIO_CMDLINE_DEVICES and by the test guest.
            cmdline
                .insert("virtio_mmio.device", &format!("4K@{base:#x}:{gsi}"))
                .map_err(VmError::Cmdline)?;
        }
        linux_loader::loader::load_cmdline(&mem, GuestAddress(layout::CMDLINE), &cmdline)
            .map_err(VmError::CmdlineLoad)?;
        let cmdline_len = cmdline
            .as_cstring()
            .map_err(VmError::Cmdline)?
            .as_bytes()
            .len() as u32;
        let pvh_entry = match (cfg.boot, kernel.pvh_entry) {
            (BootProtocol::Linux, _) => None,
            (BootProtocol::Auto, entry) => entry,
            (BootProtocol::Pvh, Some(entry)) => Some(entry),
            (BootProtocol::Pvh, None) => {
                return Err(BootError::NoPvhEntry(cfg.kernel.clone()).into())
            }
        };
        let cr3 = paging::setup_identity_paging(&mem)?;
        regs::write_gdt_idt(
            &mem,
            if pvh_entry.is_some() {
                &PVH_GDT
            } else {
                &BOOT_GDT
            },
        )?;
        mptable::setup_mptable(&mem, cfg.vcpus)?;
        let acpi_rsdp = if cfg.acpi {
            let devices: Vec<acpi::MmioDevice> = (0..cfg.net.len())
                .map(|i| {
                    let (base, gsi) = virtio_slot(i);
                    acpi::MmioDevice { base, gsi }
                })
                .collect();
            Some(acpi::setup_acpi(&mem, cfg.vcpus, &devices)?)
        } else {
            None
        };
        bootparams::write_zero_page(
            &mem,
            &bootparams::ZeroPage {
                setup_header: kernel.setup_header,
                cmdline_addr: layout::CMDLINE,
                cmdline_len,
                initrd,
                acpi_rsdp,
            },
        )
        .map_err(BootError::from)?;
        // (PVH entry, start info address) when booting through PVH.
        let pvh_boot = match pvh_entry {
            Some(entry) => Some((
                entry.raw_value(),
                pvh::write_start_info(&mem, layout::CMDLINE, initrd, acpi_rsdp)
                    .map_err(BootError::from)?,
            )),
            None => None,
        };

        // Devices.
        let control = Arc::new(Control::new(cfg.vcpus.into()).map_err(VmError::EventFd)?);
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        vm_fd
            .register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(kvm_err("KVM_IRQFD"))?;
        let (out, stdin) = self.console_out()?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            EventFdTrigger(serial_irq),
            out,
        )));
        pio.insert(serial.clone(), COM1_BASE, COM1_LEN)?;
        let reset_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        let i8042 = I8042::new(EventFdTrigger(
            reset_evt.try_clone().map_err(VmError::EventFd)?,
        ));
        pio.insert(Arc::new(Mutex::new(i8042)), I8042_BASE, I8042_LEN)?;
        let testdev = Arc::new(Mutex::new(TestDevice::new()));
        pio.insert(
            testdev.clone(),
            TESTDEV_PORT.into(),
            TESTDEV_PORT_LEN.into(),
        )?;
        mmio.insert(testdev.clone(), layout::MMIO_DEVICES, layout::MMIO_WINDOW)?;

        let mut subscribers: Vec<Subscriber> = Vec::new();
        for (i, net) in cfg.net.iter().enumerate() {
            let (base, gsi) = virtio_slot(i);
            let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
            vm_fd
                .register_irqfd(&irq, gsi)
                .map_err(kvm_err("KVM_IRQFD"))?;
            let dev = VirtioMmioNet::new(net, mem.clone(), irq)
                .map_err(|source| VmError::Net { index: i, source })?;
            for (offset, queue, evt) in dev.notify_events() {
                vm_fd
                    .register_ioevent(&evt, &IoEventAddress::Mmio(base + offset), queue)
                    .map_err(kvm_err("KVM_IOEVENTFD"))?;
            }
            let dev = Arc::new(Mutex::new(dev));
            mmio.insert(dev.clone(), base, layout::MMIO_WINDOW)?;
            subscribers.push(dev);
        }
        subscribers.push(Arc::new(Mutex::new(
            ExitWatcher::new(control.clone(), reset_evt, cfg.timeout())
                .map_err(VmError::EventFd)?,
        )));
        if stdin {
            subscribers.push(Arc::new(Mutex::new(StdinForwarder::new(serial.clone()))));
        }

        // vCPUs.
        let base_cpuid = cpuid::supported(&kvm)?;
        let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
        let mut vcpus = Vec::with_capacity(cfg.vcpus.into());
        for i in 0..cfg.vcpus {
            let fd = vm_fd
                .create_vcpu(u64::from(i))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            fd.set_cpuid2(&cpuid::for_vcpu(&base_cpuid, i, cfg.vcpus)?)
                .map_err(kvm_err("KVM_SET_CPUID2"))?;
            msr::setup_msrs(&fd)?;
            regs::setup_lapic(&fd)?;
            if i == 0 || cfg.ap_start == ApStart::Direct {
                match pvh_boot {
                    Some((entry, info)) => {
                        regs::setup_regs_pvh(&fd, entry, info)?;
                        regs::setup_sregs_pvh(&fd)?;
                    }
                    None => {
                        regs::setup_regs(&fd, kernel.entry.raw_value())?;
                        regs::setup_sregs(&fd, cr3)?;
                    }
                }
                regs::setup_fpu(&fd)?;
                if i != 0 {
                    fd.set_mp_state(kvm_mp_state {
                        mp_state: KVM_MP_STATE_RUNNABLE,
                    })
                    .map_err(kvm_err("KVM_SET_MP_STATE"))?;
                }
            }
            vcpus.push(Vcpu {
                fd,
                index: i,
                pio: pio.clone(),
                mmio: mmio.clone(),
                control: control.clone(),
            });
        }

        Ok(Vm {
            _kvm: kvm,
            _vm_fd: vm_fd,
            _mem: mem,
            vcpus,
            control,
            subscribers,
            seccomp: self.seccomp,
            testdev,
        })
    }
}

/// Most vCPUs per VM, whatever KVM allows: xAPIC ids 0..=253 plus the IOAPIC's id.
pub const MAX_VCPUS: usize = 254;

/// Most virtio-net devices per VM (GSIs 5, 6, 7, 9..=13).
pub const MAX_NET_DEVICES: usize = 8;

/// MMIO window base and GSI of the `i`th virtio device: windows follow the test device's;
/// GSIs start at 5 (after COM1's 4), skipping the RTC's 8.
pub fn virtio_slot(i: usize) -> (u64, u32) {
    let base = layout::MMIO_DEVICES + (i as u64 + 1) * layout::MMIO_WINDOW;
    let gsi = 5 + i as u32;
    (base, if gsi >= 8 { gsi + 1 } else { gsi })
}

fn register_memory(vm_fd: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, r) in mem.iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: r.start_addr().raw_value(),
            memory_size: r.len(),
            userspace_addr: r.as_ptr() as u64,
        };
        // SAFETY: the region describes a live mapping owned by `mem`, which the `Vm` keeps
        // alive (and unmapped only after every vCPU thread has been joined).
        unsafe { vm_fd.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}
