// submit_expense(employee_id, amount, currency, description): file an expense claim.
// Answers 200 {status: "approved" | "pending_approval", reference: "EXP-XXXXXXXX", ...};
// 422 with every problem.
const crypto = require('crypto');
const EMPLOYEES = {
  E1001: { name: 'Dana Smith', approver: 'Priya Patel' },
  E1002: { name: 'Luis Romero', approver: 'Priya Patel' },
  E1003: { name: 'Mei Chen', approver: 'Tom Becker' },
};
const CURRENCIES = ['EUR', 'USD', 'GBP', 'CHF', 'CAD'];
const AUTO_APPROVE_LIMIT = 500; // in the claim's currency
const MAX_AMOUNT = 10000;

const answer = (statusCode, body) => [{ json: { statusCode, body } }];
const args = $input.first().json.arguments;
const problems = [];
const employeeId = typeof args.employee_id === 'string' ? args.employee_id.trim().toUpperCase() : '';
const employee = EMPLOYEES[employeeId];
if (!employee) problems.push(`unknown employee_id ${JSON.stringify(args.employee_id ?? null)}`);
const amount = args.amount;
if (typeof amount !== 'number' || !Number.isFinite(amount) || amount <= 0 || amount > MAX_AMOUNT) {
  problems.push(`amount must be a number above 0 and at most ${MAX_AMOUNT}`);
}
const currency = typeof args.currency === 'string' ? args.currency.trim().toUpperCase() : '';
if (!CURRENCIES.includes(currency)) problems.push(`currency must be one of ${CURRENCIES.join(', ')}`);
const description = typeof args.description === 'string' ? args.description.trim() : '';
if (description.length < 3 || description.length > 500) {
  problems.push('description must be 3 to 500 characters');
}
if (problems.length > 0) {
  return answer(422, { error: problems.join('; '), problems });
}
const rounded = Math.round(amount * 100) / 100;
const autoApproved = rounded <= AUTO_APPROVE_LIMIT;
return answer(200, {
  status: autoApproved ? 'approved' : 'pending_approval',
  reference: `EXP-${crypto.randomBytes(4).toString('hex').toUpperCase()}`,
  employee_id: employeeId,
  employee_name: employee.name,
  amount: rounded,
  currency,
  description,
  approver: autoApproved ? null : employee.approver,
  reimbursement: autoApproved ? 'with the next payroll' : 'after approval, with the following payroll',
});
