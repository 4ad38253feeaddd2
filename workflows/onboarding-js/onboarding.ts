// Employee onboarding, the showcase workflow, in TypeScript.
//
// `create_record`, then `provision_laptop` and `provision_access` in
// parallel, then `send_welcome_email`: the same steps as the Rust example
// (workflows/onboarding). Kill the host at any point and run the same
// workflow id again: finished steps are not repeated and the summary comes
// out the same.

import { branch, type Context } from 'durable-sdk';
import { call } from './services.js';

interface Employee {
  id: string;
  name: string;
  email: string;
  role: string;
  /** Latency each mock service call simulates, to watch (or kill) a slow run. */
  service_latency_ms?: number;
  /** Where the mock services listen (`mock-http`). */
  services_url?: string;
}

interface Laptop {
  asset_tag: string;
  model: string;
}

const SERVICES = 'http://127.0.0.1:8088';

const provisionLaptop = branch('provision_laptop', async (employee: Employee): Promise<Laptop> => {
  const laptop = { asset_tag: `LT-${employee.id}`, model: laptopModel(employee.role) };
  await call(employee.services_url ?? SERVICES, 'it', 'provision_laptop', employee.service_latency_ms ?? 0, laptop);
  return laptop;
});

const provisionAccess = branch('provision_access', async (employee: Employee): Promise<string[]> => {
  const groups = accessGroups(employee.role);
  await call(employee.services_url ?? SERVICES, 'iam', 'provision_access', employee.service_latency_ms ?? 0, [
    employee.email,
    groups,
  ]);
  return groups;
});

export default async function onboard(ctx: Context, employee: Employee) {
  const services = employee.services_url ?? SERVICES;
  const latency = employee.service_latency_ms ?? 0;

  const recordId = await ctx.step('create_record', async () => {
    const recordId = `HR-${employee.id}`;
    await call(services, 'hr', 'create_record', latency, [recordId, employee.name, employee.email]);
    return recordId;
  });

  // Two independent provisioning steps: the host runs them at the same time.
  const [laptop, accessGroups] = await ctx.parallel([provisionLaptop(employee), provisionAccess(employee)]);

  const welcomeEmailId = await ctx.step('send_welcome_email', async () => {
    const messageId = `MAIL-${employee.id}`;
    const body = `Welcome, ${employee.name}! Your laptop ${laptop.asset_tag} is ready; you have access to ${accessGroups.join(', ')}.`;
    await call(services, 'mail', 'send_welcome_email', latency, [messageId, employee.email, body]);
    return messageId;
  });

  return {
    employee_id: employee.id,
    record_id: recordId,
    laptop,
    access_groups: accessGroups,
    welcome_email_id: welcomeEmailId,
  };
}

function laptopModel(role: string): string {
  switch (role) {
    case 'engineer':
      return 'ThinkPad P16';
    case 'designer':
      return 'MacBook Pro 16';
    default:
      return 'ThinkPad T14';
  }
}

function accessGroups(role: string): string[] {
  const groups = ['all-staff', 'sso'];
  if (role === 'engineer') {
    groups.push('github', 'ci');
  } else if (role === 'designer') {
    groups.push('figma');
  }
  return groups;
}
